"""The attempt sequence as a pure state machine: every path, on a fake clock, no I/O."""

import random
from dataclasses import dataclass

import pytest

from router.attempt import DONE, Answer, Attempts, Deliver, Fallback, Retry, Send, Wait
from router.deadline import Deadline
from router.policy import TrafficPolicy
from router.resilience import VersionRuntime
from router.retry import Outcome
from tests.support.clock import FakeClock

EPS = ["http://a", "http://b"]


@dataclass
class Stats:
    retries: int = 0
    budget_exhausted: int = 0


class Request:
    """A waiter and its machine, as an executor would hold them (resume -> resumed())."""

    def __init__(self, world, version="v1", *, replayable=True, timeout_ms=None):
        self.world = world
        rt = world.runtimes[version]
        deadline = Deadline(rt.policy.timeouts, world.clock, timeout_ms)
        self.m = Attempts(
            version,
            rt,
            world.runtimes.get,
            deadline,
            world.clock,
            waiter=self,
            stats=world.stats,
            fallback=world.fallback.get(version, ()),
            replayable=replayable,
            model="m",
        )
        self.resumed = []

    def resume(self):
        self.resumed.append(self.m.resumed())


class World:
    def __init__(self, policies=None, endpoints=None, fallback=None, seed=1):
        self.clock = FakeClock(100.0)
        self.stats = Stats()
        self.rng = random.Random(seed)
        policies = policies or {"v1": {}}
        self.runtimes = {
            v: VersionRuntime(
                (endpoints or {}).get(v, EPS), TrafficPolicy.from_dict(raw), now=self.clock, rng=self.rng
            )
            for v, raw in policies.items()
        }
        self.fallback = fallback or {}

    def request(self, version="v1", **kw):
        return Request(self, version, **kw)

    def sent(self, version="v1", **kw):
        """A request whose first attempt is in flight."""
        r = Request(self, version, **kw)
        assert r.m.start().__class__ is Send
        return r


def limiter(world, version="v1"):
    return world.runtimes[version].limiter


def test_admitted_sent_answered_delivered_and_the_slot_is_free_again():
    w = World()
    r = w.request()
    d = r.m.start()
    assert d.__class__ is Send and d.ep in (0, 1) and d.timeout_s == pytest.approx(30.0)
    assert limiter(w).in_flight == 1
    w.clock.advance(0.02)
    d = r.m.answered(200)
    assert d.__class__ is Deliver and d.reason is None
    assert (
        r.m.done and r.m.outcome is Outcome.SUCCESS and r.m.ended_at - r.m.started_at == pytest.approx(0.02)
    )
    assert limiter(w).in_flight == 0
    assert w.runtimes["v1"].balancer.endpoints[r.m.ep].in_flight == 0


def test_a_client_error_is_the_models_answer_delivered_unmarked():
    w = World()
    r = w.sent()
    d = r.m.answered(404)
    assert d.__class__ is Deliver and d.reason is None and r.m.outcome is Outcome.CLIENT_ERROR
    assert w.stats.retries == 0


def test_queued_then_resumed_when_a_slot_is_released():
    w = World({"v1": {"limits": {"max_in_flight": 1, "max_queued": 4}}})
    first, second = w.request(), w.request()
    assert first.m.start().__class__ is Send
    d = second.m.start()
    assert d.__class__ is Wait and d.until == pytest.approx(100.0 + 30.0)
    assert first.m.answered(200).__class__ is Deliver  # releases: the slot goes to `second`
    assert len(second.resumed) == 1 and second.resumed[0].__class__ is Send
    assert limiter(w).in_flight == 1 and limiter(w).queued == 0
    assert second.m.queue_expired() is DONE  # the timer that the resume should have cancelled


def test_queued_then_deadline_answers_deadline_exceeded_and_frees_the_queue():
    w = World({"v1": {"limits": {"max_in_flight": 1, "max_queued": 4}}})
    first, second = w.request(), w.request(timeout_ms=50)
    first.m.start()
    assert second.m.start().__class__ is Wait
    w.clock.advance(0.05)
    d = second.m.queue_expired()
    assert d.__class__ is Answer and d.reason == "deadline_exceeded" and second.m.done
    assert limiter(w).queued == 0
    first.m.answered(200)
    assert second.resumed == [] and limiter(w).in_flight == 0


def test_a_full_queue_is_overloaded():
    w = World({"v1": {"limits": {"max_in_flight": 1, "max_queued": 0}}})
    w.request().m.start()
    d = w.request().m.start()
    assert d.__class__ is Answer and d.reason == "overloaded" and "m/v1" in d.message


def test_waiters_a_raised_limit_admits_are_resumed_by_whoever_swaps_the_table():
    w = World({"v1": {"limits": {"max_in_flight": 1, "max_queued": 4}}})
    running, a, b = w.request(), w.request(), w.request()
    running.m.start()
    assert a.m.start().__class__ is Wait and b.m.start().__class__ is Wait
    rt = w.runtimes["v1"].rebuild(EPS, TrafficPolicy.from_dict({"limits": {"max_in_flight": 3}}))
    assert rt.pending_resume == (a, b)
    for waiter in rt.pending_resume:
        waiter.resume()
    assert [d.__class__ for d in a.resumed + b.resumed] == [Send, Send]
    assert limiter(w).in_flight == 3
    for r in (running, a, b):
        assert r.m.answered(200).__class__ is Deliver
    assert limiter(w).in_flight == 0


def test_breaker_open_falls_back_and_the_fallback_is_admitted_on_its_own_runtime():
    w = World(
        {"v1": {"circuit_breaker": {"min_calls": 1}}, "v2": {}},
        fallback={"v1": ("v2",)},
    )
    r = w.sent()
    r.m.answered(503)  # not retried: the breaker opened on it
    w2 = w.request()
    d = w2.m.start()
    assert d.__class__ is Fallback and d.version == "v2" and w2.m.fallback
    assert limiter(w, "v1").in_flight == 0
    d = w2.m.proceed()
    assert d.__class__ is Send and limiter(w, "v2").in_flight == 1
    assert w2.m.answered(200).__class__ is Deliver and limiter(w, "v2").in_flight == 0


def test_breaker_open_without_a_fallback_answers_when_it_half_opens():
    w = World({"v1": {"circuit_breaker": {"min_calls": 1, "open_s": 30}}})
    r = w.sent()
    r.m.answered(503)
    w.clock.advance(10)
    d = w.request().m.start()
    assert d.__class__ is Answer and d.reason == "breaker_open" and d.retry_after_s == pytest.approx(20.0)


def test_a_retry_within_the_budget_goes_to_the_other_endpoint():
    w = World()
    r = w.request()
    first = r.m.start().ep
    d = r.m.failed(Outcome.CONNECT_FAILURE, "upstream_unreachable", "cannot connect")
    assert d.__class__ is Retry and 0 <= d.after_s <= 0.025 and w.stats.retries == 1
    d = r.m.proceed()
    assert d.__class__ is Send and d.ep != first and r.m.attempts == 2
    assert r.m.answered(200).__class__ is Deliver and limiter(w).in_flight == 0


def test_attempts_exhausted_answers_the_last_error():
    w = World()
    r = w.sent()
    r.m.failed(Outcome.CONNECT_FAILURE, "upstream_unreachable", "cannot connect")
    r.m.proceed()
    d = r.m.failed(Outcome.RESET, "upstream_reset", "reset by peer")
    assert d.__class__ is Answer and (d.reason, d.message) == ("upstream_reset", "reset by peer")
    assert limiter(w).in_flight == 0


def test_budget_exhausted_without_an_answer_says_so_and_counts():
    w = World({"v1": {"retries": {"budget": {"ratio": 0.0, "min_per_second": 0.0}}}})
    r = w.sent()
    d = r.m.failed(Outcome.CONNECT_FAILURE, "upstream_unreachable", "cannot connect")
    assert d.__class__ is Answer and d.reason == "retry_budget_exhausted"
    assert w.stats.budget_exhausted == 1 and w.stats.retries == 0


def test_budget_exhausted_after_a_failed_answer_passes_that_answer_on_marked():
    w = World({"v1": {"retries": {"budget": {"ratio": 0.0, "min_per_second": 0.0}}}})
    r = w.sent()
    d = r.m.answered(503)
    assert d.__class__ is Deliver and d.reason == "upstream_5xx" and w.stats.budget_exhausted == 1


def test_the_models_failed_answer_is_passed_through_marked_when_not_retryable():
    w = World()
    r = w.sent()
    d = r.m.answered(500)  # 5xx is opt-in
    assert d.__class__ is Deliver and d.reason == "upstream_5xx" and r.m.done
    assert r.m.outcome is Outcome.SERVER_ERROR and w.stats.retries == 0


def test_a_per_try_timeout_is_retried_but_a_deadline_timeout_is_not():
    w = World({"v1": {"timeouts": {"request_ms": 1000, "per_try_ms": 300}}})
    r = w.request()
    d = r.m.start()
    assert d.timeout_s == pytest.approx(0.3)
    w.clock.advance(0.3)
    assert r.m.failed(Outcome.TIMEOUT, "upstream_timeout", "no response").__class__ is Retry
    assert r.m.outcome is Outcome.TIMEOUT
    w.clock.advance(0.5)
    d = r.m.proceed()
    assert d.timeout_s == pytest.approx(0.2)  # what remains of the deadline
    w.clock.advance(0.2)
    d = r.m.failed(Outcome.TIMEOUT, "upstream_timeout", "no response")
    assert d.__class__ is Answer and d.reason == "deadline_exceeded" and r.m.outcome is Outcome.DEADLINE


def test_a_deadline_timeout_does_not_fall_back():
    w = World({"v1": {}, "v2": {}}, fallback={"v1": ("v2",)})
    r = w.request(timeout_ms=100)
    r.m.start()
    w.clock.advance(0.1)
    d = r.m.failed(Outcome.TIMEOUT, "upstream_timeout", "no response")
    assert d.__class__ is Answer and d.reason == "deadline_exceeded"


def test_no_attempt_starts_after_the_deadline():
    w = World({"v1": {"retries": {"backoff_base_ms": 0, "backoff_max_ms": 0}}})
    r = w.request(timeout_ms=200)
    r.m.start()
    assert r.m.failed(Outcome.CONNECT_FAILURE, "upstream_unreachable", "cannot connect").__class__ is Retry
    w.clock.advance(0.2)  # the timer fires late
    d = r.m.proceed()
    assert d.__class__ is Answer and d.reason == "deadline_exceeded" and limiter(w).in_flight == 0


def test_no_healthy_endpoint_falls_back_else_answers_503_with_the_reason():
    ejecting = {"outlier": {"consecutive_failures": 1, "max_ejection_percent": 100}}
    w = World({"v1": ejecting, "v2": {}}, fallback={"v1": ("v2",)})
    rt = w.runtimes["v1"]
    for ep in (0, 1):
        rt.begin(ep)
        rt.finish(ep, Outcome.CONNECT_FAILURE, 0.01)
    d = w.request().m.start()
    assert d.__class__ is Fallback and d.version == "v2"
    alone = World({"v1": ejecting})
    rt = alone.runtimes["v1"]
    for ep in (0, 1):
        rt.begin(ep)
        rt.finish(ep, Outcome.CONNECT_FAILURE, 0.01)
    d = alone.request().m.start()
    assert (
        d.__class__ is Answer and d.reason == "no_healthy_endpoint" and d.retry_after_s == pytest.approx(30.0)
    )


def test_client_gone_mid_attempt_is_no_verdict_and_frees_everything():
    w = World({"v1": {"limits": {"max_in_flight": 1, "max_queued": 4}}})
    running, queued = w.request(), w.request()
    running.m.start()
    queued.m.start()
    queued.m.cancel()  # gone while queued: withdrawn
    assert limiter(w).queued == 0
    running.m.cancel()
    assert limiter(w).in_flight == 0 and queued.resumed == []
    assert w.runtimes["v1"].breaker.snapshot()["calls"] == 0
    assert running.m.answered(200) is DONE  # a late answer changes nothing


def test_a_cancelled_request_handed_a_slot_passes_it_on():
    w = World({"v1": {"limits": {"max_in_flight": 1, "max_queued": 4}}})
    a, b, c = w.request(), w.request(), w.request()
    a.m.start()
    b.m.start()
    c.m.start()
    b.m.done = True  # a front end that marked it done without cancel(): resumed() passes it on
    a.m.answered(200)
    assert b.resumed == [DONE] and c.resumed[0].__class__ is Send


def test_a_429_with_retry_after_moves_to_another_endpoint_then_passes_through():
    w = World()
    r = w.request()
    first = r.m.start().ep
    d = r.m.answered(429, retry_after_s=2.0)
    assert d.__class__ is Retry and d.after_s == 0.0 and r.m.outcome is Outcome.TOO_MANY_REQUESTS
    second = r.m.proceed().ep
    assert second != first
    d = r.m.answered(429, retry_after_s=2.0)
    assert d.__class__ is Deliver and d.reason == "upstream_rate_limited"
    assert limiter(w).in_flight == 0 and w.stats.retries == 1


def test_a_429_with_retry_after_goes_to_the_fallback_version():
    w = World({"v1": {}, "v2": {}}, endpoints={"v1": ["http://a"]}, fallback={"v1": ("v2",)})
    r = w.sent()
    assert r.m.answered(429, retry_after_s=1.0).__class__ is Fallback
    assert r.m.proceed().__class__ is Send and r.m.version == "v2"


def test_a_429_without_retry_after_is_not_retried_by_default():
    w = World()
    r = w.sent()
    d = r.m.answered(429)
    assert d.__class__ is Deliver and d.reason == "upstream_rate_limited" and w.stats.retries == 0


def test_a_streamed_answer_holds_its_slot_until_it_ends():
    w = World()
    r = w.sent()
    w.clock.advance(0.01)
    assert r.m.answered(200, streaming=True).__class__ is Deliver
    assert not r.m.done and limiter(w).in_flight == 1
    r.m.commit()
    w.clock.advance(5.0)
    r.m.ended()
    assert r.m.done and limiter(w).in_flight == 0 and r.m.outcome is Outcome.SUCCESS
    ewma = w.runtimes["v1"].balancer.snapshot(r.m.ep)["ewma_ms"]
    assert ewma == pytest.approx(10.0)  # the time to the first byte, not the stream's length


def test_a_stream_broken_after_commit_feeds_the_policies_and_stops():
    w = World({"v1": {"outlier": {"consecutive_failures": 1}}})
    r = w.sent()
    r.m.answered(200, streaming=True)
    r.m.commit()
    d = r.m.failed(Outcome.RESET, "upstream_reset", "the stream broke")
    assert d is DONE and r.m.outcome is Outcome.RESET and limiter(w).in_flight == 0
    assert w.runtimes["v1"].outlier.snapshot(r.m.ep)["ejected"]


def test_a_stream_broken_before_commit_may_still_retry():
    w = World()
    r = w.sent()
    r.m.answered(200, streaming=True)
    assert r.m.failed(Outcome.RESET, "upstream_reset", "dropped").__class__ is Retry


def test_a_failed_answer_after_commit_is_not_retried():
    w = World({"v1": {"retries": {"retry_on": ["503"]}}, "v2": {}}, fallback={"v1": ("v2",)})
    r = w.sent()
    r.m.commit()  # a front end that already wrote (its own framing) before the status
    assert r.m.answered(503) is DONE and limiter(w).in_flight == 0


def test_a_body_that_cannot_be_replayed_gets_one_attempt_and_no_fallback():
    w = World({"v1": {}, "v2": {}}, fallback={"v1": ("v2",)})
    r = w.request(replayable=False)
    r.m.start()
    d = r.m.failed(Outcome.CONNECT_FAILURE, "upstream_unreachable", "cannot connect")
    assert d.__class__ is Answer and d.reason == "upstream_unreachable" and w.stats.retries == 0
    # before it is sent, the body is intact: an open breaker may still fall back
    w2 = World({"v1": {"limits": {"max_in_flight": 1, "max_queued": 0}}, "v2": {}}, fallback={"v1": ("v2",)})
    w2.request().m.start()
    assert w2.request(replayable=False).m.start().__class__ is Fallback


def test_the_fallback_chain_is_followed_once_per_version():
    w = World(
        {v: {"limits": {"max_in_flight": 1, "max_queued": 0}} for v in ("v1", "v2", "v3")},
        fallback={"v1": ("gone", "v2", "v3")},
    )
    for v in ("v1", "v2", "v3"):
        w.request(v).m.start()  # every version full
    r = w.request()
    assert r.m.start().version == "v2"
    assert r.m.proceed().version == "v3"
    d = r.m.proceed()
    assert d.__class__ is Answer and d.reason == "overloaded" and "m/v3" in d.message


def test_shadow_choice_names_another_known_version():
    w = World({"v1": {"shadow": {"version": "v2", "percent": 100}}, "v2": {}})
    assert w.request().m.shadow() == "v2"
    assert World().request().m.shadow() is None
