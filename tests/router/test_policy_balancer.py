import random
from collections import Counter

import pytest

from router.balancer import P2CEwmaBalancer, RoundRobinBalancer, make_balancer
from tests.support.clock import FakeClock


def always(i, now):
    return True


def test_p2c_prefers_the_faster_endpoint():
    clock = FakeClock(0.0)
    bal = P2CEwmaBalancer(["fast", "slow", "mid"], always, clock, random.Random(42))
    latency = {0: 0.010, 1: 0.200, 2: 0.050}
    picks = Counter()
    for _ in range(3000):
        i = bal.pick()
        picks[i] += 1
        bal.begin(i)
        clock.advance(0.001)
        bal.finish(i, latency[i])
    assert picks[0] > picks[2] > picks[1]
    assert picks[0] / 3000 > 0.6 and picks[1] / 3000 < 0.1


def test_p2c_counts_in_flight_requests():
    clock = FakeClock(0.0)
    bal = P2CEwmaBalancer(["a", "b"], always, clock, random.Random(1))
    for i in (0, 1):
        bal.begin(i)
        bal.finish(i, 0.010)
    for _ in range(3):
        bal.begin(0)  # a is busy: load 0.010 x 4 vs 0.010 x 1
    assert all(bal.pick() == 1 for _ in range(20))


def test_unmeasured_endpoints_are_tried_when_idle_and_penalised_when_busy():
    clock = FakeClock(0.0)
    bal = P2CEwmaBalancer(["old", "new"], always, clock, random.Random(3))
    bal.begin(0)
    bal.finish(0, 0.050)
    assert all(bal.pick() == 1 for _ in range(10))  # never measured and idle: cost 0
    bal.begin(1)
    assert all(bal.pick() == 0 for _ in range(10))  # unknown and busy: penalty


def test_peak_ewma_jumps_up_and_decays_down():
    clock = FakeClock(0.0)
    bal = P2CEwmaBalancer(["a"], always, clock, random.Random(0))
    bal.begin(0)
    bal.finish(0, 0.100)
    bal.begin(0)
    clock.advance(1.0)
    bal.finish(0, 0.500)  # slower: taken at once
    assert bal.snapshot(0)["ewma_ms"] == pytest.approx(500.0)
    clock.advance(10.0)  # one decay constant later, read-only snapshot decays by e
    assert bal.snapshot(0)["ewma_ms"] == pytest.approx(500.0 / 2.718281828, rel=1e-6)
    bal.begin(0)
    bal.finish(0, 0.100)  # faster: blended with weight 1 - e^-1
    w = 2.718281828**-1
    assert bal.snapshot(0)["ewma_ms"] == pytest.approx(500 * w + 100 * (1 - w), rel=1e-6)


def test_p2c_skips_unavailable_and_excluded_endpoints():
    clock = FakeClock(0.0)
    down = {1, 3}
    bal = P2CEwmaBalancer([str(i) for i in range(5)], lambda i, now: i not in down, clock, random.Random(9))
    seen = {bal.pick() for _ in range(200)}
    assert seen == {0, 2, 4}
    assert {bal.pick(exclude={0, 2}) for _ in range(50)} == {4}
    assert bal.pick(exclude={0, 2, 4}) in {0, 2, 4}  # nothing else: retry in place
    down.update({0, 2, 4})
    assert bal.pick() is None


def test_round_robin_order_skips_unavailable():
    clock = FakeClock(0.0)
    down = set()
    bal = RoundRobinBalancer(["a", "b", "c"], lambda i, now: i not in down, clock, random.Random(0))
    assert [bal.pick() for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    down.add(2)
    assert [bal.pick() for _ in range(4)] == [1, 0, 1, 0]
    assert bal.pick(exclude={1}) == 0
    assert bal.pick(exclude={0, 1}) in {0, 1}
    down.update({0, 1})
    assert bal.pick() is None


def test_p2c_is_deterministic_for_a_seed():
    def run():
        bal = make_balancer("p2c-ewma", ["a", "b", "c", "d"], always, FakeClock(0.0), random.Random(11))
        return [bal.pick() for _ in range(50)]

    assert run() == run()
    assert isinstance(
        make_balancer("round-robin", ["a"], always, FakeClock(), random.Random()), RoundRobinBalancer
    )


def test_p2c_single_endpoint_fast_path_honours_availability_and_draws_nothing():
    clock = FakeClock(0.0)
    down = set()
    rng = random.Random(5)
    bal = P2CEwmaBalancer(["only"], lambda i, now: i not in down and now < 10.0, clock, rng)
    state = rng.getstate()
    assert bal.pick() == 0 and bal.pick(exclude=(0,)) == 0  # excluded: a retry in place
    down.add(0)  # ejected or failing health checks
    assert bal.pick() is None and bal.pick(exclude=(0,)) is None
    down.clear()
    assert bal.pick() == 0
    clock.advance(10.0)  # availability is asked at the balancer's clock
    assert bal.pick() is None
    assert rng.getstate() == state  # as before the fast path: one endpoint consumes no draw
