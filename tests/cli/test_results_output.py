"""`meshgate experiments results` renders the gateway's latency metric in ms, other metrics as they are."""

from __future__ import annotations

from gateway.cli.experiments_cmd import print_results
from gateway.cli.output import console


def _arm(name: str, mean: float, lift: float | None, control: bool = False) -> dict:
    return {
        "arm": name,
        "is_control": control,
        "n": 300,
        "mean": mean,
        "abs_lift": None if lift is None else {"estimate": lift, "ci": (lift * 0.5, lift * 1.5)},
        "rel_lift": None if lift is None else {"estimate": 0.25, "ci": (0.1, 0.4)},
        "p_value_adjusted": None if control else 0.01,
        "sequential_p_value_adjusted": None,
        "chance_to_beat_control": None if control else 0.99,
        "verdict": None if control else "worse",
    }


RESULTS = {
    "name": "ab",
    "model": "digits",
    "status": "running",
    "control": "v1",
    "engine": "frequentist",
    "alpha": 0.05,
    "arms": [
        {
            "arm": arm,
            "weight": 50,
            "requests": 300,
            "errors": 0,
            "error_rate": 0.0,
            "unkeyed": 0,
            "latency_ms": {"mean": 0.4, "p50": 0.5, "p95": 0.9, "p99": 2.0},
        }
        for arm in ("v1", "v2")
    ],
    "metrics": [
        {
            "name": "latency",
            "kind": "continuous",
            "higher_is_better": False,
            "arms": [_arm("v1", 0.000378, None, control=True), _arm("v2", 0.000472, 0.000094)],
        },
        {
            "name": "score",
            "kind": "continuous",
            "higher_is_better": True,
            "arms": [_arm("v1", 0.5, None, control=True), _arm("v2", 0.625, 0.125)],
        },
        {
            "name": "revenue",
            "kind": "continuous",
            "higher_is_better": True,
            "arms": [
                _arm("v1", 0.01, None, control=True),
                {**_arm("v2", 0.02, 0.01), "rel_lift": {"estimate": 1.0, "ci": (None, None)}},
            ],
        },
    ],
    "srm": {"flagged": False, "reason": "split matches the weights (p = 0.87)"},
}


def test_latency_in_ms_and_other_metrics_unscaled() -> None:
    with console.capture() as captured:
        print_results(RESULTS)
    text = captured.get()
    assert "latency (continuous, ms, lower is better)" in text
    latency_table = text.split("latency (continuous")[1].split("score (continuous")[0]
    assert "0.378" in latency_table and "0.472" in latency_table  # seconds shown as ms
    assert "0.094 [0.047, 0.141]" in latency_table  # the lift and its interval scaled alike
    assert "0.000378" not in latency_table
    score_table = text.split("score (continuous, higher is better)")[1].split("revenue")[0]
    assert "0.625" in score_table and "0.125 [0.0625, 0.188]" in score_table


def test_an_unbounded_interval_reads_as_dashes() -> None:
    # a control mean indistinguishable from 0 leaves the relative lift without bounds (None)
    with console.capture() as captured:
        print_results(RESULTS)
    revenue = captured.get().split("revenue (continuous, higher is better)")[1]
    assert "100.0% [-, -]" in revenue


def _llm(p50: float, cost: float) -> dict:
    return {
        "requests": 120, "streams": 100, "broken_streams": 2, "broken_stream_rate": 0.02,
        "ttft_ms": {"mean": p50, "p50": p50, "p95": p50 * 2, "p99": p50 * 3, "ci": {}},
        "inter_token_ms": 1.5, "prompt_tokens": {"total": 2400.0, "mean": 20.0},
        "completion_tokens": {"total": 6000.0, "mean": 50.0}, "cost_usd": {"total": cost, "mean": cost / 120},
    }  # fmt: skip


def test_llm_arms_get_their_own_table_and_ttft_reads_in_ms() -> None:
    arms = zip(RESULTS["arms"], (40.0, 20.0), (0.0024, 0.0012), strict=True)
    ttft_metric = {
        "name": "ttft",
        "kind": "continuous",
        "higher_is_better": False,
        "arms": [_arm("v1", 0.040, None, control=True), _arm("v2", 0.020, -0.020)],
    }
    results = {
        **RESULTS,
        "arms": [{**a, "llm": _llm(p50, cost)} for a, p50, cost in arms],
        "metrics": [*RESULTS["metrics"], ttft_metric],
    }
    with console.capture() as captured:
        print_results(results)
    text = captured.get()
    llm_table = text.split("LLM")[1].split("latency (continuous")[0]
    row = next(line for line in llm_table.splitlines() if "v2" in line)
    assert "20" in row and "60" in row and "6000" in row and "0.0012" in row and "2.0%" in row
    ttft = text.split("ttft (continuous, ms, lower is better)")[1]
    assert "40" in ttft and "-20 [-10, -30]" in ttft  # seconds shown as ms, the lift scaled alike


def test_results_without_llm_traffic_have_no_llm_table() -> None:
    with console.capture() as captured:
        print_results({**RESULTS, "arms": [{**a, "llm": None} for a in RESULTS["arms"]]})
    assert "LLM" not in captured.get()
