"""Fault knobs: validation and the draw of each request's fate."""

from __future__ import annotations

import math
import random

import pytest

from models.faults import FaultInjector, Faults, Injected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"error_rate": 1.5}, "error_rate: must be within [0, 1]"),
        ({"hang_rate": -0.1}, "hang_rate: must be within [0, 1]"),
        ({"error_rate": "0.5"}, "error_rate: must be a number"),
        ({"error_rate": True}, "error_rate: must be a number"),
        ({"latency_ms": -1}, "latency_ms: must be a finite number >= 0"),
        ({"latency_jitter_ms": math.inf}, "latency_jitter_ms: must be a finite number >= 0"),
        ({"latency_ms": math.nan}, "latency_ms: must be a finite number >= 0"),
        ({"fail_after": -1}, "fail_after: must be an integer >= 0"),
        ({"fail_after": 2.0}, "fail_after: must be an integer >= 0"),
        ({"seed": "x"}, "seed: must be an integer"),
    ],
)
def test_invalid_faults_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Faults(**kwargs)


def test_from_json_takes_defaults_and_rejects_unknown_fields() -> None:
    assert Faults.from_json({"error_rate": 0.5}) == Faults(error_rate=0.5)
    assert Faults.from_json(Faults(latency_ms=3, fail_after=2, seed=1).to_json()) == Faults(
        latency_ms=3, fail_after=2, seed=1
    )
    with pytest.raises(ValueError, match="unknown fault field"):
        Faults.from_json({"error_rat": 0.5})
    with pytest.raises(ValueError, match="expected a JSON object"):
        Faults.from_json([0.5])


def test_healthy_faults_are_inactive_and_always_pass() -> None:
    assert not Faults().active
    assert Faults(fail_after=0).active
    injector = FaultInjector(Faults())
    assert {injector.draw() for _ in range(100)} == {(Injected.PASS, 0.0)}


def test_fail_after_is_exact() -> None:
    injector = FaultInjector(Faults(fail_after=3))
    fates = [injector.draw()[0] for _ in range(6)]
    assert fates == [Injected.PASS] * 3 + [Injected.ERROR] * 3


def test_error_rate_is_approximately_right_and_reproducible_with_a_seed() -> None:
    def errors(seed: int) -> list[bool]:
        injector = FaultInjector(Faults(error_rate=0.3, seed=seed))
        return [injector.draw()[0] is Injected.ERROR for _ in range(2000)]

    assert errors(7) == errors(7)
    assert 0.25 < sum(errors(7)) / 2000 < 0.35


def test_hang_rate_hangs_forever() -> None:
    injector = FaultInjector(Faults(hang_rate=1.0))
    assert injector.draw() == (Injected.HANG, math.inf)


def test_latency_is_a_minimum_plus_uniform_jitter() -> None:
    injector = FaultInjector(Faults(latency_ms=20, latency_jitter_ms=10), rng=random.Random(1))
    delays = [injector.draw()[1] for _ in range(500)]
    assert all(0.020 <= delay < 0.030 for delay in delays)
    assert max(delays) - min(delays) > 0.008  # the jitter spreads them over most of the range


def test_replace_restarts_the_count_and_reseeds() -> None:
    injector = FaultInjector(Faults(fail_after=1))
    assert [injector.draw()[0] for _ in range(2)] == [Injected.PASS, Injected.ERROR]
    injector.replace(Faults(fail_after=1))
    assert injector.draw()[0] is Injected.PASS
    injector.replace(Faults())
    assert injector.faults == Faults()
    assert injector.draw() == (Injected.PASS, 0.0)
