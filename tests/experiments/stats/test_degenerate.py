"""Every engine on edge-case counters: strict-JSON results, never NaN, never an exception."""

import itertools
import json

import pytest

from experiments.stats import (
    SampleStats,
    beta_binomial,
    normal_posterior,
    sequential_noninferiority,
    sequential_test,
    two_proportion_ztest,
    welch_ttest,
)

EDGES = [
    (0, 0),
    (0, 1),
    (1, 1),
    (0, 2),
    (2, 2),
    (3, 7),
    (0, 100_000),
    (100_000, 100_000),
    (1, 10**8),
    (0, 10**9),
]
ENGINES = [two_proportion_ztest, welch_ttest, beta_binomial, normal_posterior, sequential_test]


@pytest.mark.parametrize("engine", ENGINES, ids=lambda f: f.__name__)
def test_engines_never_emit_nan_on_edge_cases(engine):
    for (a, n), (b, m) in itertools.product(EDGES, EDGES):
        result = engine(SampleStats.binary(a, n), SampleStats.binary(b, m))
        json.dumps(result.to_dict(), allow_nan=False)  # raises on NaN or infinity


def test_noninferiority_never_emits_nan_on_edge_cases():
    for (a, n), (b, m) in itertools.product(EDGES, EDGES):
        result = sequential_noninferiority(SampleStats.binary(a, n), SampleStats.binary(b, m), 0.01)
        json.dumps(result.to_dict(), allow_nan=False)
        assert result.decision in ("pass", "fail", "continue")
