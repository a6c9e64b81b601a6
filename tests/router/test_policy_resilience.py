import random

import pytest

from router.breaker import BreakerState
from router.policy import TrafficPolicy
from router.resilience import (
    ATTEMPTS_EXHAUSTED,
    BREAKER_OPEN,
    DEADLINE_EXCEEDED,
    NO_HEALTHY_ENDPOINT,
    NOT_RETRYABLE,
    OVERLOADED,
    QUEUED,
    RETRY_BUDGET_EXHAUSTED,
    VersionRuntime,
)
from router.retry import Outcome
from tests.support.clock import FakeClock

EPS = ["http://a", "http://b", "http://c"]


def runtime(raw=None, endpoints=EPS, seed=1):
    clock = FakeClock(0.0)
    events = []
    rt = VersionRuntime(
        endpoints,
        TrafficPolicy.from_dict(raw or {}),
        now=clock,
        rng=random.Random(seed),
        on_transition=events.append,
    )
    return rt, clock, events


def one_request(rt, clock, outcome=Outcome.SUCCESS, latency=0.01):
    assert rt.admit() is None
    ep = rt.pick()
    rt.begin(ep)
    clock.advance(latency)
    rt.finish(ep, outcome, latency)
    assert rt.release() is None
    return ep


def test_a_request_flows_through_every_layer():
    rt, clock, _ = runtime()
    ep = one_request(rt, clock)
    snap = rt.snapshot()
    assert snap["breaker"]["state"] == "closed" and snap["breaker"]["calls"] == 1
    assert snap["limits"]["in_flight"] == 0
    assert snap["retry_budget"]["requests"] == 1
    assert snap["available_endpoints"] == 3
    row = snap["endpoints"][ep]
    assert row["endpoint"] == EPS[ep] and row["ewma_ms"] == pytest.approx(10.0) and row["in_flight"] == 0
    assert row["available"] and not row["ejected"]


def test_breaker_open_rejects_then_half_open_probes_close_it():
    rt, clock, events = runtime(
        {
            "circuit_breaker": {"min_calls": 4, "half_open_probes": 2},
            "outlier": {"consecutive_failures": 1000},
        }
    )
    for _ in range(4):
        one_request(rt, clock, Outcome.UNAVAILABLE)
    assert rt.admit() == BREAKER_OPEN
    assert rt.snapshot()["breaker"]["state"] == "open"
    clock.advance(30)
    assert rt.admit() is None and rt.admit() is None
    assert rt.admit() == BREAKER_OPEN  # exactly two probes
    for _ in range(2):
        ep = rt.pick()
        rt.begin(ep)
        rt.finish(ep, Outcome.SUCCESS, 0.01)
        rt.release()
    assert rt.breaker.state is BreakerState.CLOSED
    assert [e.new.value for e in events] == ["open", "half_open", "closed"]


def test_client_errors_do_not_open_the_breaker_nor_eject():
    rt, clock, _ = runtime({"circuit_breaker": {"min_calls": 2}})
    for _ in range(50):
        one_request(rt, clock, Outcome.CLIENT_ERROR)
        one_request(rt, clock, Outcome.TOO_MANY_REQUESTS)
    assert rt.breaker.state is BreakerState.CLOSED and rt.available_endpoints() == 3


def test_overload_queues_then_rejects_and_hands_slots_over():
    rt, _, _ = runtime({"limits": {"max_in_flight": 1, "max_queued": 1}})
    assert rt.admit() is None
    assert rt.admit("w1") == QUEUED
    assert rt.admit("w2") == OVERLOADED
    assert rt.admit() == OVERLOADED
    assert rt.snapshot()["limits"]["rejected"] == 2
    assert rt.release() == "w1"  # w1 now holds the slot
    assert rt.release() is None
    assert rt.admit("w3") is None


def test_a_half_open_probe_refused_by_the_limiter_is_given_back():
    rt, clock, _ = runtime(
        {
            "circuit_breaker": {"min_calls": 1, "half_open_probes": 1},
            "limits": {"max_in_flight": 1, "max_queued": 0},
        }
    )
    one_request(rt, clock, Outcome.UNAVAILABLE)
    clock.advance(30)
    rt.limiter.in_flight = 1  # a request admitted before the breaker opened is still running
    assert rt.admit() == OVERLOADED
    rt.limiter.in_flight = 0
    assert rt.admit() is None  # the probe slot was not lost


def test_cancelled_waiter_gives_its_probe_back():
    rt, clock, _ = runtime(
        {
            "circuit_breaker": {"min_calls": 1, "half_open_probes": 1},
            "limits": {"max_in_flight": 1, "max_queued": 5},
        }
    )
    one_request(rt, clock, Outcome.UNAVAILABLE)
    clock.advance(30)
    rt.limiter.in_flight = 1
    assert rt.admit("w") == QUEUED
    assert rt.cancel("w") and not rt.cancel("w")
    rt.limiter.in_flight = 0
    assert rt.admit() is None


def test_retry_decisions_in_order():
    rt, _, _ = runtime()
    assert rt.retry_delay(1, Outcome.CLIENT_ERROR) == NOT_RETRYABLE
    assert rt.retry_delay(1, Outcome.SERVER_ERROR) == NOT_RETRYABLE  # 5xx is opt-in
    assert rt.retry_delay(1, Outcome.DEADLINE) == NOT_RETRYABLE
    delay = rt.retry_delay(1, Outcome.UNAVAILABLE)
    assert isinstance(delay, float) and 0.0 <= delay <= 0.025
    assert rt.retry_delay(2, Outcome.UNAVAILABLE) == ATTEMPTS_EXHAUSTED
    assert rt.retry_delay(1, Outcome.CONNECT_FAILURE, remaining_s=0.0) == DEADLINE_EXCEEDED
    assert rt.snapshot()["retry_budget"]["retries"] == 1  # refused retries spent nothing


def test_retries_can_be_switched_off_and_budget_exhausts():
    rt, _, _ = runtime({"retries": {"enabled": False}})
    assert rt.retry_delay(1, Outcome.CONNECT_FAILURE) == NOT_RETRYABLE
    rt, _, _ = runtime({"retries": {"budget": {"ratio": 0.5, "min_per_second": 0}}})
    for _ in range(4):
        rt.admit()
    assert [rt.retry_delay(1, Outcome.RESET) for _ in range(3)][2] == RETRY_BUDGET_EXHAUSTED
    assert rt.snapshot()["retry_budget"]["limit_exceeded"] == 1


def test_no_retry_once_the_breaker_is_open():
    rt, clock, _ = runtime({"circuit_breaker": {"min_calls": 1}})
    one_request(rt, clock, Outcome.UNAVAILABLE)
    assert rt.retry_delay(1, Outcome.UNAVAILABLE) == BREAKER_OPEN


def test_retry_goes_to_another_endpoint():
    rt, _, _ = runtime()
    for _ in range(50):
        first = rt.pick()
        assert rt.pick(exclude=(first,)) != first


@pytest.mark.parametrize("balancer", ["round-robin", "p2c-ewma"])
def test_a_failing_endpoint_is_ejected_and_traffic_moves_away(balancer):
    rt, clock, _ = runtime(
        endpoints=["good", "bad"], raw={"outlier": {"max_ejection_percent": 50}, "load_balancer": balancer}
    )
    picks = [0, 0]
    for _ in range(200):
        assert rt.admit() is None
        ep = rt.pick()
        picks[ep] += 1
        rt.begin(ep)
        clock.advance(0.01)
        rt.finish(ep, Outcome.UNAVAILABLE if ep == 1 else Outcome.SUCCESS, 0.01)
        rt.release()
    assert picks[1] == 5  # five consecutive failures, then ejected for 30 s
    row = rt.snapshot()["endpoints"][1]
    assert row["ejected"] and row["consecutive_failures"] == 0
    assert all(rt.pick() == 0 for _ in range(20))


def test_all_endpoints_ejected_means_no_pick():
    rt, clock, _ = runtime(endpoints=["only"])
    for _ in range(5):
        one_request(rt, clock, Outcome.CONNECT_FAILURE)
    assert rt.pick() is None and rt.available_endpoints() == 0


def test_abort_ends_an_attempt_without_a_verdict():
    rt, _, _ = runtime()
    rt.admit()
    ep = rt.pick()
    rt.begin(ep)
    rt.abort(ep)
    rt.release()
    snap = rt.snapshot()
    assert snap["endpoints"][ep]["in_flight"] == 0 and snap["breaker"]["calls"] == 0


def test_rebuild_keeps_state_of_endpoints_that_stay():
    rt, _, _ = runtime(endpoints=["a", "b", "c"], raw={"outlier": {"max_ejection_percent": 50}})
    rt.admit()
    for ep, outcome in [(0, Outcome.SUCCESS)] + [(1, Outcome.CONNECT_FAILURE)] * 5:
        rt.begin(ep)
        rt.finish(ep, outcome, 0.02)
    rt.begin(2)  # an attempt in flight on c across the rebuild
    new = rt.rebuild(["b", "a", "d"], rt.policy)
    assert new.breaker is rt.breaker and new.limiter is rt.limiter and new.budget is rt.budget
    rows = {r["endpoint"]: r for r in new.snapshot()["endpoints"]}
    assert (
        rows["b"]["ejected"] and rows["a"]["ewma_ms"] == pytest.approx(20.0) and rows["d"]["ewma_ms"] is None
    )
    assert new.limiter.in_flight == 1
    rt.finish(2, Outcome.SUCCESS, 0.01)  # the old runtime still reports into the shared objects
    assert new.snapshot()["breaker"]["calls"] == 7
    changed = new.rebuild(
        ["a"], TrafficPolicy.from_dict({"circuit_breaker": {"min_calls": 3}, "limits": {"max_in_flight": 5}})
    )
    assert changed.breaker is not new.breaker and changed.limiter is new.limiter
    assert changed.limiter.max_in_flight == 5 and changed.pending_resume == ()


def test_shadow_version_from_policy():
    rt, _, _ = runtime({"shadow": {"version": "v9", "percent": 100}})
    assert rt.shadow_version() == "v9"
    rt, _, _ = runtime()
    assert rt.shadow_version() is None


def test_budgeted_retries_under_a_storm_stay_within_the_budget():
    rt, clock, _ = runtime(
        {
            "retries": {"retry_on": ["5xx"], "max_attempts": 3},
            "circuit_breaker": {"min_calls": 10**6},
            "outlier": {"consecutive_failures": 10**6},
        }
    )
    requests = attempts = 0
    for _ in range(30):  # 30 s at 200 requests/s, every attempt fails
        for _ in range(200):
            requests += 1
            rt.admit()
            tries = 0
            while True:
                ep = rt.pick(exclude=())
                rt.begin(ep)
                rt.finish(ep, Outcome.SERVER_ERROR, 0.001)
                tries += 1
                if isinstance(rt.retry_delay(tries, Outcome.SERVER_ERROR), str):
                    break
            attempts += tries
            rt.release()
            clock.advance(1 / 200)
    retries = attempts - requests
    # Linkerd: at most 20% of requests plus 10/s over any 10 s window (one bucket of slack)
    assert retries <= 0.2 * requests + 10 * 30 + 100
    assert retries >= 0.2 * requests  # and the budget is actually used
    assert rt.snapshot()["retry_budget"]["limit_exceeded"] > 0


def test_health_checks_take_endpoints_out_of_the_pick():
    rt, _, _ = runtime(
        {"health_check": {"unhealthy_threshold": 2, "healthy_threshold": 1}}, endpoints=["a", "b"]
    )
    assert rt.health_check(0, False) and not rt.health_check(0, False)
    assert all(rt.pick() == 1 for _ in range(20))
    assert rt.snapshot()["endpoints"][0]["health_check"] == "unhealthy"
    assert rt.health_check(0, True)
    assert {rt.pick() for _ in range(50)} == {0, 1}


def test_queued_requests_count_in_the_retry_budget():
    rt, _, _ = runtime({"limits": {"max_in_flight": 1, "max_queued": 5}})
    rt.admit()
    rt.admit("w1")
    assert rt.admit() == OVERLOADED
    assert rt.snapshot()["retry_budget"]["requests"] == 2


def test_retry_after_is_when_the_breaker_half_opens():
    rt, clock, _ = runtime(
        {"circuit_breaker": {"min_calls": 4, "open_s": 20}, "outlier": {"consecutive_failures": 1000}}
    )
    assert rt.retry_after_s(BREAKER_OPEN) is None  # closed: nothing to wait for
    for _ in range(4):
        one_request(rt, clock, Outcome.UNAVAILABLE)
    assert rt.admit() == BREAKER_OPEN
    clock.advance(5)
    assert rt.retry_after_s(BREAKER_OPEN) == pytest.approx(15.0)
    assert rt.retry_after_s(OVERLOADED) is None


def test_retry_after_is_when_the_first_ejected_endpoint_returns():
    rt, clock, _ = runtime(
        {"outlier": {"consecutive_failures": 1, "base_ejection_s": 10, "max_ejection_percent": 100}},
        endpoints=["a", "b"],
    )
    one_request(rt, clock, Outcome.CONNECT_FAILURE)  # ejects one endpoint for 10 s
    clock.advance(3)
    one_request(rt, clock, Outcome.CONNECT_FAILURE)  # the other, until 13 s
    assert rt.pick() is None
    assert rt.retry_after_s(NO_HEALTHY_ENDPOINT) == pytest.approx(10.0 - 3.01, abs=0.02)


def test_retry_after_is_unknown_when_health_checks_hold_the_endpoints_out():
    rt, _, _ = runtime({"health_check": {"unhealthy_threshold": 1}}, endpoints=["a"])
    rt.health_check(0, False)
    assert rt.pick() is None and rt.retry_after_s(NO_HEALTHY_ENDPOINT) is None
