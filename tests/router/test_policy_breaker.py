import pytest

from router.breaker import BreakerState, CircuitBreaker, WindowCounter
from router.policy import BreakerPolicy
from tests.support.clock import FakeClock

CLOSED, OPEN, HALF = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def make(**kw):
    clock = FakeClock()
    events = []
    cb = CircuitBreaker(BreakerPolicy(**kw), clock, events.append)
    return cb, clock, events


def feed(cb, failures, successes):
    for _ in range(successes):
        cb.record(False)
    for _ in range(failures):
        cb.record(True)


def test_window_counter_slides_bucket_by_bucket():
    clock = FakeClock(0.0)
    w = WindowCounter(10.0, clock)
    w.add(1, 1)
    clock.advance(4)
    w.add(2, 0)
    assert w.totals() == (3, 1)
    clock.advance(6)  # t=10: the t=0 bucket has left the window
    assert w.totals() == (2, 0)
    clock.advance(4)  # t=14: the t=4 bucket has left too
    assert w.totals() == (0, 0)
    w.add(5, 5)
    clock.advance(1000)  # a long idle gap clears everything at once
    assert w.totals() == (0, 0)


def test_stays_closed_below_min_calls_even_at_100_percent_failures():
    cb, _, events = make()
    feed(cb, failures=19, successes=0)
    assert cb.state is CLOSED and cb.allow() and events == []


def test_opens_at_failure_rate_over_min_calls():
    cb, clock, events = make()
    feed(cb, failures=9, successes=10)
    assert cb.state is CLOSED
    cb.record(True)  # 10 of 20 = 50%
    assert cb.state is OPEN and not cb.allow()
    assert [(e.old, e.new) for e in events] == [(CLOSED, OPEN)]
    assert events[0].at == clock.t and "10 of 20" in events[0].reason


def test_below_failure_rate_stays_closed():
    cb, _, events = make()
    feed(cb, failures=9, successes=11)
    assert cb.state is CLOSED and events == []


def test_old_failures_leave_the_window():
    cb, clock, _ = make()
    feed(cb, failures=15, successes=0)
    clock.advance(10.0)
    feed(cb, failures=5, successes=15)  # 5 of 20 in the window
    assert cb.state is CLOSED


def test_open_then_half_open_after_open_s_admits_exactly_the_probes():
    cb, clock, events = make(min_calls=2, half_open_probes=3)
    feed(cb, failures=2, successes=0)
    clock.advance(29.9)
    assert not cb.allow() and cb.state is OPEN
    clock.advance(0.1)
    assert [cb.allow() for _ in range(5)] == [True, True, True, False, False]
    assert cb.state is HALF
    assert [(e.old, e.new) for e in events] == [(CLOSED, OPEN), (OPEN, HALF)]


def test_half_open_closes_after_all_probes_succeed():
    cb, clock, events = make(min_calls=2, half_open_probes=3)
    feed(cb, failures=2, successes=0)
    clock.advance(30)
    for _ in range(3):
        assert cb.allow()
    cb.record(False)
    cb.record(False)
    assert cb.state is HALF
    cb.record(False)
    assert cb.state is CLOSED and cb.allow()
    assert [(e.old, e.new) for e in events] == [(CLOSED, OPEN), (OPEN, HALF), (HALF, CLOSED)]
    assert cb.snapshot()["calls"] == 0  # closed starts with a fresh window


def test_half_open_reopens_on_a_probe_failure_and_waits_again():
    cb, clock, events = make(min_calls=2)
    feed(cb, failures=2, successes=0)
    clock.advance(30)
    assert cb.allow() and cb.allow()
    cb.record(False)
    cb.record(True)
    assert cb.state is OPEN and not cb.allow()
    assert cb.opened_at == clock.t
    clock.advance(30)
    assert cb.allow() and cb.state is HALF
    assert [e.new for e in events] == [OPEN, HALF, OPEN, HALF]


def test_abandoned_probe_frees_its_slot():
    cb, clock, _ = make(min_calls=1, half_open_probes=1)
    cb.record(True)
    clock.advance(30)
    assert cb.allow() and not cb.allow()
    cb.abandon()
    assert cb.allow()


def test_lost_probes_cannot_wedge_the_breaker():
    cb, clock, _ = make(min_calls=1, half_open_probes=2)
    cb.record(True)
    clock.advance(30)
    assert cb.allow() and cb.allow() and not cb.allow()
    clock.advance(29)
    assert not cb.allow()
    clock.advance(1)  # no word from any probe for open_s: a new round of probes
    assert cb.allow() and cb.allow() and not cb.allow()


def test_slow_calls_count_as_failures():
    cb, _, _ = make(min_calls=4, slow_call_ms=500)
    cb.record(False, 0.499)
    cb.record(False, 0.1)
    cb.record(False, 0.5)
    assert cb.state is CLOSED
    cb.record(False, 2.0)  # 2 slow of 4
    assert cb.state is OPEN


def test_late_results_while_open_are_ignored_and_no_duplicate_events():
    cb, _, events = make(min_calls=2)
    feed(cb, failures=4, successes=0)
    feed(cb, failures=0, successes=10)
    assert cb.state is OPEN and len(events) == 1


@pytest.mark.parametrize("state", ["closed", "open", "half_open"])
def test_snapshot_reports_state(state):
    cb, clock, _ = make(min_calls=1)
    if state != "closed":
        cb.record(True)
    if state == "half_open":
        clock.advance(30)
        cb.allow()
    snap = cb.snapshot()
    assert snap["state"] == state
    if state == "open":
        assert snap["reopens_in_s"] == 30.0
