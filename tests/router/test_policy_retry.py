import math
import random

import pytest

from router.policy import RetryBudgetPolicy, RetryPolicy
from router.retry import Outcome, RetryBudget, backoff_s, classify_status, retryable_outcomes
from tests.support.clock import FakeClock


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SUCCESS),
        (204, Outcome.SUCCESS),
        (304, Outcome.SUCCESS),
        (400, Outcome.CLIENT_ERROR),
        (404, Outcome.CLIENT_ERROR),
        (422, Outcome.CLIENT_ERROR),
        (429, Outcome.TOO_MANY_REQUESTS),
        (500, Outcome.SERVER_ERROR),
        (502, Outcome.SERVER_ERROR),
        (504, Outcome.SERVER_ERROR),
        (503, Outcome.UNAVAILABLE),
        (0, Outcome.SERVER_ERROR),
        (600, Outcome.SERVER_ERROR),
    ],
)
def test_classify_status(status, outcome):
    assert classify_status(status) is outcome


def test_only_model_faults_count_as_failures():
    failed = {o for o in Outcome if o.failed}
    assert failed == {
        Outcome.SERVER_ERROR,
        Outcome.UNAVAILABLE,
        Outcome.CONNECT_FAILURE,
        Outcome.RESET,
        Outcome.TIMEOUT,
        Outcome.DEADLINE,
    }


def test_retry_on_compiles_to_outcomes():
    assert retryable_outcomes(RetryPolicy().retry_on) == {
        Outcome.CONNECT_FAILURE,
        Outcome.RESET,
        Outcome.TIMEOUT,
        Outcome.UNAVAILABLE,
    }
    assert retryable_outcomes(["5xx"]) == {Outcome.SERVER_ERROR, Outcome.UNAVAILABLE}
    assert retryable_outcomes(["429"]) == {Outcome.TOO_MANY_REQUESTS}
    every = retryable_outcomes(["connect-failure", "reset", "per-try-timeout", "503", "5xx", "429"])
    assert (
        Outcome.DEADLINE not in every and Outcome.CLIENT_ERROR not in every and Outcome.SUCCESS not in every
    )


def test_backoff_is_full_jitter_within_envoy_bounds():
    policy = RetryPolicy()
    rng = random.Random(7)
    for retry, ceiling in [(1, 0.025), (2, 0.075), (3, 0.175), (4, 0.25), (10, 0.25), (100, 0.25)]:
        draws = [backoff_s(retry, policy, rng) for _ in range(2000)]
        assert min(draws) >= 0.0 and max(draws) <= ceiling
        assert max(draws) > 0.9 * ceiling and min(draws) < 0.1 * ceiling  # full jitter spans the range
        assert abs(sum(draws) / len(draws) - ceiling / 2) < 0.05 * ceiling


class _FixedRng(random.Random):
    def random(self):
        return 0.999999


def test_backoff_upper_edge_is_exact():
    assert math.isclose(
        backoff_s(2, RetryPolicy(backoff_base_ms=10, backoff_max_ms=1000), _FixedRng()), 0.03, rel_tol=1e-5
    )


def _budget(**kw):
    clock = FakeClock(0.0)
    return RetryBudget(RetryBudgetPolicy(**kw), clock), clock


def _drain(budget):
    n = 0
    while budget.try_withdraw():
        n += 1
    return n


@pytest.mark.parametrize("requests", [0, 1, 4, 5, 99, 100, 1000, 1234])
def test_budget_allows_ratio_times_requests_plus_the_reserve(requests):
    budget, _ = _budget()
    for _ in range(requests):
        budget.deposit()
    assert _drain(budget) == math.floor(0.2 * requests) + 100  # 10/s x 10 s
    assert budget.limit_exceeded == 1


def test_budget_without_reserve_is_exactly_the_ratio():
    budget, _ = _budget(min_per_second=0)
    assert not budget.try_withdraw()
    for _ in range(10):
        budget.deposit()
    assert _drain(budget) == 2
    for _ in range(5):
        budget.deposit()
    assert _drain(budget) == 1  # 15 requests allow 3 retries in all
    assert budget.limit_exceeded == 3


def test_budget_refills_as_the_window_slides():
    budget, clock = _budget(min_per_second=1, window_s=10)  # reserve: 10 retries
    for _ in range(50):
        budget.deposit()
    assert _drain(budget) == 20  # 10 + 10
    clock.advance(5)
    assert budget.available() == 0
    clock.advance(5)  # the requests and retries of t=0 have aged out
    assert budget.available() == 10
    snap = budget.snapshot()
    assert snap["requests"] == 0 and snap["retries"] == 0 and snap["limit_exceeded"] == 1
