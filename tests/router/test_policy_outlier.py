from router.outlier import OutlierDetector
from router.policy import HealthCheckPolicy, OutlierPolicy, SuccessRatePolicy
from tests.support.clock import FakeClock


def make(n=10, **kw):
    clock = FakeClock(0.0)
    det = OutlierDetector([f"ep{i}" for i in range(n)], OutlierPolicy(**kw), clock)
    return det, clock


def fail(det, i, times=5):
    for _ in range(times):
        det.record(i, True)


def test_five_consecutive_failures_eject_for_the_base_time():
    det, clock = make()
    fail(det, 0, 4)
    det.record(0, False)  # a success resets the streak
    fail(det, 0, 4)
    assert det.available(0, clock.t)
    det.record(0, True)
    assert not det.available(0, clock.t)
    snap = det.snapshot(0)
    assert snap["ejected"] and snap["ejected_for_s"] == 30.0 and snap["ejection_multiplier"] == 1
    assert "5 consecutive failures" in snap["ejection_reason"]
    clock.advance(29.999)
    assert not det.available(0, clock.t)
    clock.advance(0.001)
    assert det.available(0, clock.t)


def test_ejection_time_grows_with_each_ejection_and_is_capped():
    det, clock = make(interval_s=1000.0)  # no decay between ejections here
    durations = []
    for _ in range(12):
        fail(det, 0)
        until = det.endpoints[0].ejected_until
        durations.append(until - clock.t)
        clock.t = until
    assert durations == [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]


def test_multiplier_decays_one_step_per_healthy_interval():
    det, clock = make()  # interval 10 s
    fail(det, 0)
    clock.advance(30)
    fail(det, 0)  # released just now: multiplier 2
    assert det.endpoints[0].ejected_until - clock.t == 60
    clock.advance(60 + 25)  # 25 s healthy = 2 intervals: 2 -> 0, then +1
    fail(det, 0)
    assert det.endpoints[0].ejected_until - clock.t == 30


def test_a_released_endpoint_starts_a_fresh_streak():
    det, clock = make()
    fail(det, 0)
    clock.advance(30)
    fail(det, 0, 4)
    assert det.available(0, clock.t)


def test_ten_percent_of_three_still_ejects_one_but_not_two():
    det, clock = make(n=3)
    fail(det, 0)
    fail(det, 1)
    assert not det.available(0, clock.t) and det.available(1, clock.t)
    assert det.overflow == 1
    assert det.available_count() == 2


def test_max_ejection_percent_caps_ejections():
    det, clock = make(n=20)  # 10% of 20 = 2
    for i in range(5):
        fail(det, i)
    assert [det.available(i, clock.t) for i in range(5)] == [False, False, True, True, True]
    assert det.overflow == 3


def test_a_single_endpoint_can_be_ejected():
    det, _ = make(n=1)
    fail(det, 0)
    assert det.available_count() == 0


def test_success_rate_ejection_on_the_interval():
    clock = FakeClock(0.0)
    policy = OutlierPolicy(
        consecutive_failures=1000, success_rate=SuccessRatePolicy(min_hosts=5, request_volume=100)
    )
    det = OutlierDetector([f"ep{i}" for i in range(10)], policy, clock)
    for i in range(10):
        for k in range(100):
            det.record(i, failed=(i == 3 and k % 2 == 0))  # ep3 succeeds 50%, the others 100%
    assert det.available_count() == 10  # not evaluated before the interval
    clock.advance(10)
    det.record(0, False)
    assert not det.available(3, clock.t) and det.available_count() == 9
    assert "success rate 50.0%" in det.snapshot(3)["ejection_reason"]


def test_success_rate_needs_enough_hosts_with_volume():
    clock = FakeClock(0.0)
    policy = OutlierPolicy(consecutive_failures=1000, success_rate=SuccessRatePolicy())
    det = OutlierDetector([f"ep{i}" for i in range(10)], policy, clock)
    for i in range(4):  # only 4 endpoints reach the request volume
        for k in range(100):
            det.record(i, failed=(i == 3 and k % 2 == 0))
    clock.advance(10)
    det.record(5, False)
    assert det.available_count() == 10


def test_health_check_thresholds():
    clock = FakeClock(0.0)
    det = OutlierDetector(["a", "b"], OutlierPolicy(), clock, HealthCheckPolicy())
    assert det.health_check(0, False) and det.health_check(0, False)
    assert not det.health_check(0, False)  # third consecutive failure
    assert not det.available(0, clock.t) and det.snapshot(0)["health_check"] == "unhealthy"
    assert not det.health_check(0, True)
    assert not det.health_check(0, False)
    assert not det.health_check(0, True)
    assert det.health_check(0, True)  # two consecutive passes
    assert det.available(0, clock.t)


def test_state_is_shared_with_a_rebuilt_detector():
    det, clock = make(n=3)
    fail(det, 1)
    kept = {h.key: h for h in det.endpoints}
    fresh = OutlierDetector([kept.get(k) or k for k in ["ep1", "ep9"]], OutlierPolicy(), clock)
    assert not fresh.available(0, clock.t) and fresh.available(1, clock.t)
