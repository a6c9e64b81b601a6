"""router.ratelimit: the sliding-window meter, exact and shared (lease) modes, with known values."""

from __future__ import annotations

import math

import pytest

from router.ratelimit import Limits, Meter, go_duration, window_of

T0 = 60.0 * 1000  # the start of a minute


def test_window_of_and_durations():
    assert window_of(T0 + 15) == (1000, 0.25)
    assert go_duration(0.02) == "20ms"
    assert go_duration(1.5) == "1.5s"
    assert go_duration(360) == "6m0s"
    assert go_duration(61.25) == "1m1.25s"


def test_limits_are_whole_numbers():
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="rpm"):
            Limits(rpm=bad)
    assert Limits(rpm=None, tpm=None) == Limits()


def test_exact_mode_admits_up_to_rpm_then_says_when_to_retry():
    m = Meter(Limits(rpm=3), shared=False, now=T0)
    verdicts = [m.admit(T0 + 30) for _ in range(4)]
    assert [v.admitted for v in verdicts] == [True, True, True, False]
    assert [v.remaining_requests for v in verdicts[:3]] == [2, 1, 0]
    refused = verdicts[3]
    assert refused.limit == "requests"
    # 3 requests this minute: the next minute starts them at weight 1 and they decay; one
    # slot is free once 3 * (1 - g) <= 2, i.e. g = 1/3 into it: 30 s + 20 s
    assert refused.retry_after_s == pytest.approx(50.0)
    assert not m.admit(T0 + 60 + 19).admitted
    assert m.admit(T0 + 60 + 20.1).admitted


def test_sliding_window_weighs_the_previous_minute():
    m = Meter(Limits(rpm=10), shared=False, now=T0)
    for _ in range(10):
        assert m.admit(T0 + 59).admitted
    # 15 s into the next minute: 10 * 0.75 = 7.5 counted, so two more fit (7.5 + 2 <= 10)
    assert m.admit(T0 + 75).admitted
    assert m.admit(T0 + 75).admitted
    v = m.admit(T0 + 75)
    assert not v.admitted
    # 2 this minute, budget 9: 10 * (1 - f) + 2 <= 9 at f = 0.3, 3 s after 15 s
    assert v.retry_after_s == pytest.approx(3.0)


def test_tokens_go_negative_and_block_until_the_window_slides():
    m = Meter(Limits(tpm=1000), shared=False, now=T0)
    assert m.admit(T0 + 10).admitted
    m.record(5000, T0 + 10)  # one large answer: the budget is now far below zero
    v = m.admit(T0 + 20)
    assert not v.admitted and v.limit == "tokens"
    assert v.remaining_tokens == 0
    # 5000 this minute, budget 999: next minute at g with 5000 * (1 - g) <= 999
    assert v.retry_after_s == pytest.approx(40 + (1 - 999 / 5000) * 60)
    assert m.admit(T0 + 20 + v.retry_after_s + 0.01).admitted


def test_reset_headers_say_when_the_window_is_empty_again():
    m = Meter(Limits(rpm=5, tpm=100), shared=False, now=T0)
    v = m.admit(T0 + 30)
    assert v.reset_requests_s == pytest.approx(90.0)  # this minute's request leaves at the end of the next
    assert v.reset_tokens_s == 0.0  # no tokens yet
    assert (v.limit_requests, v.limit_tokens, v.remaining_tokens) == (5, 100, 100)


def test_unlimited_key_is_counted_but_never_refused():
    m = Meter(Limits(), shared=True, now=T0)
    assert all(m.admit(T0 + 1).admitted for _ in range(100))
    flush = m.begin_sync(T0 + 1)
    assert flush.counts == {1000: (100, 0, 0, 0)} and flush.want == (0, 0)


def test_shared_mode_one_unleased_request_then_only_leases():
    m = Meter(Limits(rpm=100), shared=True, now=T0)
    m.gateways = 100  # among 100 gateways a share of the room is < 1: the demand sizes the lease
    assert m.admit(T0 + 1).admitted  # the key's first request here: no lease yet
    v = m.admit(T0 + 1, sync_s=0.1)
    assert not v.admitted and v.retry_after_s == pytest.approx(0.1)  # room exists: retry after a sync
    # a 429 says nothing remains until retry-after, as OpenAI's do, though the window has room
    assert v.remaining_requests == 0 and v.reset_requests_s == pytest.approx(119.0)
    flush = m.begin_sync(T0 + 1)
    assert flush.counts == {1000: (1, 1, 0, 0)}
    assert flush.want == (4, 0)  # twice the demand since the last sync (2 asked)
    # the store: 1 unleased + 4 asked reserved -> 5; room 100 - (5 - 4) = 99: all granted
    granted = m.grant(flush, (5, 0), (0, 0), (0, 0), now=T0 + 1)
    assert granted == ((4, 0), (0, 0))  # nothing asked for the next minute yet
    m.settle(flush, granted, (1, 0), (0, 0), T0 + 1)
    assert [m.admit(T0 + 2).admitted for _ in range(5)] == [True] * 4 + [False]


def test_a_lease_is_at_most_a_tenth_of_the_limit():
    m = Meter(Limits(rpm=1000, tpm=50_000), shared=True, now=T0)
    for _ in range(900):
        m.admit(T0 + 1)
    m.record(40_000, T0 + 1)
    assert m.begin_sync(T0 + 1).want == (100, 5000)


def test_shared_grant_never_exceeds_the_room_left():
    m = Meter(Limits(rpm=100), shared=True, now=T0)
    for _ in range(200):
        m.admit(T0 + 30)
    flush = m.begin_sync(T0 + 30)
    assert flush.want[0] == 10  # a tenth of rpm
    # others hold 86 of this minute, the previous minute had 8 (weight 0.5): room 100 - 4 - 87 = 9
    assert m.grant(flush, (86 + 1 + 10, 0), (8, 0), (0, 0), now=T0 + 30) == ((9, 0), (0, 0))
    assert m.grant(flush, (95 + 1 + 10, 0), (8, 0), (0, 0), now=T0 + 30) == ((0, 0), (0, 0))
    # the next minute holds 7 already (asked ahead by others): they bind before the 4 do
    assert m.grant(flush, (86 + 1 + 10, 0), (8, 0), (7, 0), now=T0 + 30) == ((6, 0), (0, 0))


def test_shared_tokens_come_out_of_the_token_lease_and_the_excess_is_reserved():
    m = Meter(Limits(tpm=1000), shared=True, now=T0)
    m.lease, m.synced = [0, 300], True
    assert m.admit(T0 + 1).admitted
    m.record(500, T0 + 1)  # more than the lease: 200 beyond it
    assert m.lease[1] == 0
    assert not m.admit(T0 + 1).admitted  # the lease is spent
    flush = m.begin_sync(T0 + 1)
    assert flush.counts == {1000: (1, 0, 500, 200)}  # the store reserves the 200 too
    assert flush.want == (0, 100)  # a tenth of tpm: nothing owed is asked back


def test_shared_lease_is_given_back_when_demand_falls_and_lapses_with_its_minute():
    m = Meter(Limits(rpm=100), shared=True, now=T0)
    m.lease, m.synced, m.gateways = [10, 0], True, 100
    flush = m.begin_sync(T0 + 5)  # no demand (and no share of the room): keep 1, give 9 back
    assert (flush.want, flush.give_back, m.lease) == ((0, 0), (9, 0), [1, 0])
    m.admit(T0 + 61)  # next minute: the old lease is gone, one unleased request
    assert m.lease == [0, 0]
    flush = m.begin_sync(T0 + 61)
    assert flush.counts == {1001: (1, 1, 0, 0)}
    assert flush.lapsed == (1, 0)  # what was left of the old minute's lease goes back to it
    assert m.begin_sync(T0 + 61.1).lapsed == (0, 0)  # once


def test_failed_sync_keeps_the_counts_and_falls_back_to_exact_mode():
    m = Meter(Limits(rpm=3), shared=True, now=T0)
    m.admit(T0 + 1)
    flush = m.begin_sync(T0 + 1)
    m.sync_failed(flush)
    assert m.degraded
    assert [m.admit(T0 + 2).admitted for _ in range(3)] == [True, True, False]  # 1 + 2 = rpm
    again = m.begin_sync(T0 + 2)
    assert again.counts == {1000: (3, 3, 0, 0)}  # unleased: the store reserves them when it answers
    m.settle(again, ((0, 0), (0, 0)), (3, 0), (0, 0), T0 + 2)
    assert not m.degraded


def test_settle_adds_what_was_counted_during_the_round_trip():
    m = Meter(Limits(tpm=10_000), shared=True, now=T0)
    m.admit(T0 + 1)
    flush = m.begin_sync(T0 + 1)
    m.lease[1] = 50  # a token lease granted earlier
    assert m.admit(T0 + 1.05).admitted
    m.record(7, T0 + 1.05)
    # other gateways' counts are in the totals
    m.settle(flush, ((0, 0), (0, 0)), (40, 900), (10, 0), T0 + 1.06)
    assert m.cur == [41, 907] and m.prev == [10, 0]


def test_retry_after_is_finite_for_any_reachable_budget():
    m = Meter(Limits(rpm=1), shared=False, now=T0)
    m.admit(T0)
    v = m.admit(T0)
    assert not v.admitted and math.isfinite(v.retry_after_s)


def test_near_the_minute_end_a_sync_reserves_the_next_minutes_lease():
    m = Meter(Limits(rpm=100, tpm=1000), shared=True, now=T0)
    m.lease, m.synced, m.gateways = [3, 50], True, 100
    m.admit(T0 + 58)
    assert m.begin_sync(T0 + 58, ahead_s=1.0).want_next == (0, 0)  # 2 s before the end: not yet
    m.admit(T0 + 59.5)
    m.record(20, T0 + 59.5)
    flush = m.begin_sync(T0 + 59.5, ahead_s=1.0)
    assert flush.want_next == (2, 40)  # the same target as this minute's lease
    # at the boundary this minute counts whole: 60 reserved here leave 40 for the next one,
    # of which others asked ahead 39 (+ this sync's 2): 1 request fits; tokens have room
    granted = m.grant(flush, (60, 300), (0, 0), (39 + 2, 40), now=T0 + 59.5)
    assert granted[1] == (1, 40)
    m.settle(flush, granted, (50, 300), (0, 0), T0 + 59.5)
    assert m.next_lease == [1, 40]
    assert m.lease == [1, 40]  # no room for more requests this minute (60 + 41 > 100)
    v = m.admit(T0 + 60.01)  # the new minute starts with the lease reserved for it
    assert v.admitted and m.lease == [0, 40]
    assert m.begin_sync(T0 + 60.02).lapsed == (1, 40)  # the old minute's, returned to it


def test_a_grant_that_arrives_after_its_minute_lapses_and_the_one_ahead_is_kept():
    m = Meter(Limits(rpm=100), shared=True, now=T0)
    m.lease, m.synced, m.gateways = [1, 0], True, 100
    for _ in range(3):
        m.admit(T0 + 59.95)
    flush = m.begin_sync(T0 + 59.95, ahead_s=1.0)
    assert (flush.want, flush.want_next) == ((6, 0), (6, 0))
    granted = m.grant(flush, (10, 0), (0, 0), (6, 0), now=T0 + 60.02)
    m.settle(flush, granted, (3, 0), (0, 0), T0 + 60.02)  # the answer came in the next minute
    assert m.lease == [6, 0] and m.next_lease == [0, 0]
    assert m.begin_sync(T0 + 60.1).lapsed == (6, 0)  # this minute's grant was never usable


def test_far_under_the_limit_a_lease_is_half_a_share_of_the_room_left():
    m = Meter(Limits(rpm=6000, tpm=100_000), shared=True, now=T0)
    m.cur, m.synced, m.gateways = [100, 40_000], True, 10
    m.lease = [5, 0]  # one request a minute or so: the demand alone would keep 1
    flush = m.begin_sync(T0 + 30)
    # requests: (6000 - 100) / (2 * 10) = 295; tokens: (100000 - 40000) / 20 = 3000
    assert flush.want == (295 - 5, 3000) and flush.first
    m.gateways = 2  # two gateways: 1475 each would pass a tenth of the limit
    assert m.begin_sync(T0 + 30.1).want == (600 - 5, 10_000 - 0) and not m.begin_sync(T0 + 30.2).first
    m.cur, m.lease = [5800, 99_000], [600, 10_000]  # near the limit: the share shrinks with the room
    assert m.begin_sync(T0 + 30.3).give_back == (600 - 50, 10_000 - 250)
    assert m.begin_sync(T0 + 61).first  # a new minute: the gateway counts itself in it again
