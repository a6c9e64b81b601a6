import pytest

from router.policy import (
    MAX_FALLBACK_DEPTH,
    BreakerPolicy,
    PolicyError,
    RetryPolicy,
    TrafficPolicy,
    fallback_chain,
    merge,
    validate_fallbacks,
)


def test_defaults_follow_envoy_and_linkerd():
    p = TrafficPolicy.from_dict({})
    assert p == TrafficPolicy.from_dict(None) == TrafficPolicy()
    assert p.timeouts.request_ms == 30_000 and p.timeouts.per_try_ms is None
    assert p.retries.enabled and p.retries.max_attempts == 2
    assert p.retries.retry_on == {"connect-failure", "reset", "per-try-timeout", "503"}
    assert (p.retries.backoff_base_ms, p.retries.backoff_max_ms) == (25, 250)
    b = p.retries.budget
    assert (b.ratio, b.min_per_second, b.window_s) == (0.2, 10, 10)
    cb = p.circuit_breaker
    assert (cb.failure_rate, cb.min_calls, cb.window_s, cb.open_s, cb.half_open_probes, cb.slow_call_ms) == (
        0.5,
        20,
        10,
        30,
        5,
        None,
    )
    assert (p.limits.max_in_flight, p.limits.max_queued) == (1024, 1024)
    o = p.outlier
    assert (o.consecutive_failures, o.base_ejection_s, o.max_ejection_s, o.max_ejection_percent) == (
        5,
        30,
        300,
        10,
    )
    assert o.success_rate is None and p.health_check is None and p.shadow is None
    assert p.load_balancer == "p2c-ewma" and p.fallback_version is None


def test_round_trip_of_a_full_policy():
    raw = {
        "timeouts": {"request_ms": 5000, "per_try_ms": 1000},
        "retries": {"retry_on": ["5xx", "429", "reset"], "max_attempts": 3, "budget": {"ratio": 0.1}},
        "circuit_breaker": {"slow_call_ms": 800, "min_calls": 10},
        "limits": {"max_in_flight": 8, "max_queued": 0},
        "outlier": {"success_rate": {"min_hosts": 3}},
        "health_check": {"interval_s": 2},
        "load_balancer": "round-robin",
        "fallback_version": "v1",
        "shadow": {"version": "v3", "percent": 12.5},
    }
    p = TrafficPolicy.from_dict(raw)
    assert p.retries.retry_on == frozenset({"5xx", "429", "reset"})
    assert p.outlier.success_rate.stdev_factor == 1.9
    assert p.health_check.unhealthy_threshold == 3
    d = p.to_dict()
    assert d["retries"]["retry_on"] == ["reset", "5xx", "429"]  # canonical order
    assert TrafficPolicy.from_dict(d) == p
    assert TrafficPolicy.from_dict(p.to_dict(only_given=True)) == p
    assert set(p.to_dict(only_given=True)) == set(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"timeouts": {"request_ms": -5}}, "timeouts.request_ms: must be > 0, got -5"),
        ({"retries": {"backoff_base_ms": -1}}, "retries.backoff_base_ms: must be >= 0, got -1"),
        (
            {"retries": {"retry_on": ["reset", "foo"]}},
            "retries.retry_on[1]: unknown value 'foo' "
            "(allowed: connect-failure, reset, per-try-timeout, 503, 5xx, 429)",
        ),
        ({"retries": {"retry_on": "5xx"}}, "retries.retry_on: expected a list of strings, got string"),
        ({"retries": {"budget": {"ratio": "lots"}}}, "retries.budget.ratio: expected a number, got string"),
        ({"retries": {"budget": {"window_s": 0}}}, "retries.budget.window_s: must be > 0, got 0"),
        ({"retries": {"max_attempts": 2.5}}, "retries.max_attempts: expected an integer, got number"),
        ({"retries": {"enabled": "yes"}}, "retries.enabled: expected a boolean, got string"),
        ({"retries": {"backoff_base_ms": 300}}, "retries.backoff_max_ms: 250 is below backoff_base_ms 300"),
        ({"circuit_breaker": {"failure_rate": 1.5}}, "circuit_breaker.failure_rate: must be <= 1, got 1.5"),
        (
            {"circuit_breaker": {"half_open_probes": 0}},
            "circuit_breaker.half_open_probes: must be >= 1, got 0",
        ),
        (
            {"circuit_breaker": {"window": 10}},
            "circuit_breaker.window: unknown key (allowed: failure_rate, min_calls, window_s, open_s, "
            "half_open_probes, slow_call_ms)",
        ),
        ({"limits": {"max_in_flight": True}}, "limits.max_in_flight: expected an integer, got boolean"),
        ({"outlier": {"max_ejection_percent": 101}}, "outlier.max_ejection_percent: must be <= 100, got 101"),
        (
            {"outlier": {"success_rate": {"stdev_factor": -1}}},
            "outlier.success_rate.stdev_factor: must be >= 0, got -1",
        ),
        (
            {"timeouts": {"request_ms": 1000, "per_try_ms": 2000}},
            "timeouts.per_try_ms: 2000 exceeds request_ms 1000",
        ),
        ({"timeouts": {"request_ms": None}}, "timeouts.request_ms: must not be null"),
        ({"timeouts": []}, "timeouts: expected an object, got list"),
        (
            {"load_balancer": "least-conn"},
            "load_balancer: unknown value 'least-conn' (allowed: p2c-ewma, round-robin)",
        ),
        ({"shadow": {"percent": 10}}, "shadow.version: required"),
        ({"shadow": {"version": "v2", "percent": 150}}, "shadow.percent: must be <= 100, got 150"),
        ({"fallback_version": ""}, "fallback_version: must not be empty"),
        ({"circuit_breaker": {"open_s": float("inf")}}, "circuit_breaker.open_s: must be a finite number"),
        (
            {"retires": {}},
            "retires: unknown key (allowed: timeouts, retries, circuit_breaker, limits, outlier, "
            "health_check, load_balancer, fallback_version, shadow)",
        ),
    ],
)
def test_bad_input_names_the_field(raw, message):
    with pytest.raises(PolicyError) as info:
        TrafficPolicy.from_dict(raw)
    assert str(info.value) == message
    assert message.startswith(info.value.path + ": ")


def test_top_level_must_be_an_object():
    with pytest.raises(PolicyError, match="expected an object, got list"):
        TrafficPolicy.from_dict([1, 2])  # type: ignore[arg-type]


def test_direct_construction_validates_too():
    with pytest.raises(PolicyError, match="min_calls: must be >= 1"):
        BreakerPolicy(min_calls=0)
    with pytest.raises(PolicyError, match=r"retry_on\[0\]: unknown value 'bogus'"):
        RetryPolicy(retry_on=["bogus"])  # type: ignore[arg-type]


def test_merge_overrides_whole_top_level_sections():
    model = TrafficPolicy.from_dict(
        {
            "retries": {"max_attempts": 3, "enabled": True},
            "limits": {"max_in_flight": 10},
            "fallback_version": "v1",
        }
    )
    version = TrafficPolicy.from_dict({"retries": {"enabled": False}, "load_balancer": "round-robin"})
    eff = merge(model, version)
    assert eff.retries.enabled is False
    assert eff.retries.max_attempts == 2  # the version's section replaced the model's whole section
    assert eff.limits.max_in_flight == 10  # untouched sections come from the model default
    assert eff.fallback_version == "v1"
    assert eff.load_balancer == "round-robin"
    assert eff.given == {"retries", "limits", "fallback_version", "load_balancer"}
    assert merge(None, None) == TrafficPolicy()
    assert merge(model, None) is model
    assert merge(None, version) == version


def _policies(fallbacks):
    return {v: TrafficPolicy.from_dict({"fallback_version": f} if f else {}) for v, f in fallbacks.items()}


def test_validate_fallbacks_accepts_a_chain_and_rejects_unknown_versions():
    pol = _policies({"v3": "v2", "v2": "v1", "v1": None})
    validate_fallbacks(pol, {"v1", "v2", "v3"})
    assert fallback_chain("v3", pol) == ("v2", "v1")
    assert fallback_chain("v1", pol) == ()
    with pytest.raises(PolicyError) as info:
        validate_fallbacks(_policies({"v2": "v9"}), {"v1", "v2"})
    assert str(info.value) == "versions.v2.fallback_version: unknown version 'v9' (known: v1, v2)"


def test_validate_fallbacks_rejects_cycles_and_self_references():
    with pytest.raises(PolicyError) as info:
        validate_fallbacks(_policies({"a": "b", "b": "c", "c": "a"}), {"a", "b", "c"})
    assert str(info.value) == "versions.a.fallback_version: fallback cycle: a -> b -> c -> a"
    with pytest.raises(PolicyError) as info:
        validate_fallbacks(_policies({"a": "a"}), {"a"})
    assert str(info.value) == "versions.a.fallback_version: version 'a' cannot target itself"


def test_validate_checks_shadow_targets():
    pol = {"v1": TrafficPolicy.from_dict({"shadow": {"version": "v7", "percent": 5}})}
    with pytest.raises(PolicyError) as info:
        validate_fallbacks(pol, {"v1", "v2"})
    assert info.value.path == "versions.v1.shadow.version"


def test_fallback_chains_are_bounded():
    names = [f"v{i}" for i in range(MAX_FALLBACK_DEPTH + 3)]
    pol = _policies({names[i]: (names[i + 1] if i + 1 < len(names) else None) for i in range(len(names))})
    with pytest.raises(PolicyError, match="fallback chain longer than 5"):
        validate_fallbacks(pol, set(names))
    assert fallback_chain("v0", pol) == tuple(names[1 : 1 + MAX_FALLBACK_DEPTH])
    cyclic = _policies({"a": "b", "b": "a"})
    assert fallback_chain("a", cyclic) == ("b",)  # never loops even on an unvalidated table
