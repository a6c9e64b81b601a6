import pytest

from router.deadline import Deadline, DeadlineHeaderError, parse_timeout_header
from router.policy import TimeoutPolicy
from tests.support.clock import FakeClock


def test_policy_deadline_and_remaining_time():
    clock = FakeClock(100.0)
    d = Deadline(TimeoutPolicy(request_ms=2000), clock)
    assert d.remaining_s() == 2.0 and d.try_timeout_s() == 2.0 and not d.expired()
    clock.advance(1.5)
    assert d.remaining_s() == pytest.approx(0.5)
    assert d.header_value() == "500"
    clock.advance(0.5)
    assert d.expired() and d.remaining_s() == 0.0
    clock.advance(1.0)
    assert d.remaining_s() == 0.0 and d.header_value() == "1"


def test_client_may_only_shorten_the_deadline():
    clock = FakeClock(0.0)
    policy = TimeoutPolicy(request_ms=1000)
    assert Deadline.from_header(policy, clock, "200").remaining_s() == pytest.approx(0.2)
    assert Deadline.from_header(policy, clock, b"5000").remaining_s() == pytest.approx(1.0)
    assert Deadline.from_header(policy, clock, None).remaining_s() == pytest.approx(1.0)


def test_per_try_timeout_is_cut_to_the_remaining_time():
    clock = FakeClock(0.0)
    d = Deadline(TimeoutPolicy(request_ms=1000, per_try_ms=300), clock)
    assert d.try_timeout_s() == pytest.approx(0.3)
    clock.advance(0.8)
    assert d.try_timeout_s() == pytest.approx(0.2)


@pytest.mark.parametrize("value", ["", "0", "-5", "1.5", "abc", " ", "\uff11\uff12", "9" * 40, b"\xff"])
def test_bad_header_values(value):
    with pytest.raises(DeadlineHeaderError, match="x-meshgate-timeout-ms must be a positive whole number"):
        parse_timeout_header(value)


def test_header_parsing_tolerates_spaces():
    assert parse_timeout_header(" 250 ") == 250


@pytest.mark.parametrize(("value", "ms"), [("900, 250", 250), (b"250,900", 250), ("100,100", 100)])
def test_several_values_mean_the_shortest(value, ms):
    # HTTP joins a repeated field with commas; a deadline only shortens, so no value may extend it
    assert parse_timeout_header(value) == ms


@pytest.mark.parametrize("value", ["250,", "250,abc", ",250"])
def test_a_list_with_a_bad_value_is_refused(value):
    with pytest.raises(DeadlineHeaderError):
        parse_timeout_header(value)
