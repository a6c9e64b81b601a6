"""The fault soak in its short form (the long form: ``python -m benchmarks.soak``).

A real mesh under steady load while a seeded driver kills endpoints, fails and hangs versions,
reweighs and replaces experiments, changes limits up and down, rotates the CA root and (shared
form) restarts Redis. Every request must be answered within its deadline plus a small bound
with a success or a documented reason, nothing may leak, and experiment counters must equal
the answers the clients saw, exactly. The report lists each breach with its figures.
"""

from __future__ import annotations

import pytest

from benchmarks.soak import SoakConfig, run_soak, table

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("shared", [False, True], ids=["embedded", "shared-redis"])
def test_soak_answers_everything_in_time_and_counts_exactly(tmp_path, shared):
    report = run_soak(SoakConfig(seconds=12.0, concurrency=6, seed=11, shared=shared), tmp_path)
    assert report.requests > 500, table(report)  # the load really ran
    assert sum(report.actions.values()) >= 10, table(report)  # and so did the driver
    assert report.experiments, table(report)
    assert report.problems == [], table(report)
