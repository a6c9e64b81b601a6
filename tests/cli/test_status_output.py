"""`meshgate status` prints what the overview says, as `experiments results` and the dashboard do."""

from __future__ import annotations

from argparse import Namespace

import pytest

from gateway.cli.output import console
from gateway.cli.status_cmd import _status


class _Client:
    def __init__(self, overview: dict) -> None:
        self.overview = overview

    def get(self, path: str) -> dict:
        assert path == "/v1/overview"
        return self.overview


def _treatment(**p: float) -> dict:
    return {
        "arm": "v2",
        "is_control": False,
        "n": 400,
        "mean": 0.9,
        "rel_lift": {"estimate": 0.05, "ci": (0.01, 0.09)},
        "chance_to_beat_control": 0.97,
        "verdict": "better",
        **p,
    }


def _overview(engine: str) -> dict:
    arm = _treatment(
        p_value=0.0111, p_value_adjusted=0.0222, sequential_p_value=0.0333, sequential_p_value_adjusted=0.0444
    )
    results = {
        "control": "v1",
        "engine": engine,
        "arms": [
            {
                "arm": a,
                "weight": 50,
                "requests": 400,
                "error_rate": 0.0,
                "latency_ms": {"p50": 1.0, "p99": 2.0},
            }
            for a in ("v1", "v2")
        ],
        "metrics": [
            {
                "name": "accuracy",
                "arms": [{"arm": "v1", "is_control": True, "n": 400, "mean": 0.85, "rel_lift": None}, arm],
            }
        ],
        "srm": {"flagged": False, "p_value": 0.5, "reason": ""},
    }
    return {
        "config_version": 3,
        "data_plane": None,
        "gateways": [],
        "models": [],
        "experiments": [
            {
                "name": "ab",
                "model": "digits",
                "status": "running",
                "engine": engine,
                "control": "v1",
                "arms": [],
                "results": results,
            }
        ],
        "canaries": [],
    }


@pytest.mark.parametrize(
    ("engine", "shown"),
    [("sequential", "0.0444"), ("frequentist", "0.0222"), ("bayesian", "0.0222")],
)
def test_status_shows_the_p_value_the_verdict_uses(engine: str, shown: str) -> None:
    with console.capture() as captured:
        _status(Namespace(json=False), _Client(_overview(engine)))
    text = captured.get()
    assert shown in text, text
    others = {"0.0111", "0.0222", "0.0333", "0.0444"} - {shown}
    assert not [p for p in others if p in text], text
