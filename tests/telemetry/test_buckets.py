"""Latency histograms reach past the default request deadline: an attempt that takes 20 s (the
deadline is 30 s) must land in a bucket, or histogram_quantile reads it as the last bound."""

from __future__ import annotations

import pytest

from gateway.telemetry.metrics import _REQUEST_BUCKETS, _UPSTREAM_BUCKETS
from router.policy import TimeoutPolicy


@pytest.mark.parametrize("buckets", [_REQUEST_BUCKETS, _UPSTREAM_BUCKETS], ids=["request", "upstream"])
def test_buckets_cover_the_default_deadline_and_slow_models(buckets: tuple[float, ...]) -> None:
    deadline_s = TimeoutPolicy().request_ms / 1000.0
    assert buckets[-1] >= 2 * deadline_s
    assert deadline_s in buckets  # requests cut at the deadline are told apart from slower ones
    assert list(buckets) == sorted(set(buckets))
