"""Shadow output comparison for the Open Inference Protocol.

Given the primary's and the shadow's parsed OIP responses
(``{"outputs": [{"name", "shape", "datatype", "data"}]}``), outputs are matched by name:
integer, BOOL and BYTES outputs must match exactly; FP16/FP32/FP64 outputs agree when the
maximum absolute difference is within `atol` (default 1e-5; FP16 never below 1e-3, its
precision). NaN equals NaN and infinities equal themselves. Data may be flat (row-major) or
nested lists. Malformed responses never raise: they disagree with a reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FLOAT_DATATYPES", "FP16_MIN_ATOL", "Comparison", "OutputComparison", "compare"]

FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})
FP16_MIN_ATOL = 1e-3


@dataclass(frozen=True, slots=True)
class OutputComparison:
    name: str
    agree: bool
    datatype: str | None = None
    mismatches: int = 0  # elements that differ beyond tolerance
    max_abs_diff: float | None = None  # float outputs only
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Comparison:
    agree: bool
    outputs: tuple[OutputComparison, ...] = ()
    max_abs_diff: float | None = None  # over every float output
    reason: str | None = None  # the first disagreement, in words


def _outputs(response: Any, who: str) -> dict[str, Mapping[str, Any]] | str:
    outs = response.get("outputs") if isinstance(response, Mapping) else None
    if not isinstance(outs, list) or not all(
        isinstance(o, Mapping) and isinstance(o.get("name"), str) for o in outs
    ):
        return f"{who} response has no valid outputs list"
    by_name = {o["name"]: o for o in outs}
    if len(by_name) != len(outs):
        return f"{who} response repeats an output name"
    return by_name


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _abs_diff(a: Any, b: Any) -> float:
    if (
        isinstance(a, bool)
        or isinstance(b, bool)
        or not isinstance(a, int | float)
        or not isinstance(b, int | float)
    ):
        raise TypeError
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else math.inf
    if a == b:  # also equal infinities
        return 0.0
    return abs(a - b)


def _compare_output(name: str, p: Mapping[str, Any], s: Mapping[str, Any], atol: float) -> OutputComparison:
    dtype = p.get("datatype")
    if dtype != s.get("datatype"):
        return OutputComparison(name, False, dtype, reason=f"datatype {dtype} vs {s.get('datatype')}")
    if p.get("shape") != s.get("shape"):
        return OutputComparison(name, False, dtype, reason=f"shape {p.get('shape')} vs {s.get('shape')}")
    a, b = _flatten(p.get("data")), _flatten(s.get("data"))
    if len(a) != len(b):
        return OutputComparison(name, False, dtype, reason=f"{len(a)} vs {len(b)} elements")
    if dtype in FLOAT_DATATYPES:
        tol = max(atol, FP16_MIN_ATOL) if dtype == "FP16" else atol
        try:
            diffs = [_abs_diff(x, y) for x, y in zip(a, b, strict=True)]
        except TypeError:
            return OutputComparison(name, False, dtype, reason="non-numeric data in a float output")
        worst = max(diffs, default=0.0)
        mismatches = sum(1 for d in diffs if d > tol)
        reason = f"max abs diff {worst:g} > {tol:g}" if mismatches else None
        return OutputComparison(name, not mismatches, dtype, mismatches, worst, reason)
    mismatches = sum(1 for x, y in zip(a, b, strict=True) if x != y or type(x) is not type(y))
    reason = f"{mismatches} of {len(a)} elements differ" if mismatches else None
    return OutputComparison(name, not mismatches, dtype, mismatches, reason=reason)


def compare(primary: Any, shadow: Any, *, atol: float = 1e-5) -> Comparison:
    """Do the shadow's outputs agree with the primary's? See the module docstring."""
    p_outs = _outputs(primary, "primary")
    s_outs = _outputs(shadow, "shadow")
    for outs in (p_outs, s_outs):
        if isinstance(outs, str):
            return Comparison(False, reason=outs)
    assert isinstance(p_outs, dict) and isinstance(s_outs, dict)
    results = tuple(_compare_output(n, p_outs[n], s_outs[n], atol) for n in p_outs if n in s_outs)
    floats = [r.max_abs_diff for r in results if r.max_abs_diff is not None]
    max_diff = max(floats) if floats else None
    missing = sorted(set(p_outs) - set(s_outs))
    extra = sorted(set(s_outs) - set(p_outs))
    if missing or extra:
        reason = f"output names differ: missing in shadow {missing}, only in shadow {extra}"
        return Comparison(False, results, max_diff, reason)
    first = next((r for r in results if not r.agree), None)
    reason = None if first is None else f"output {first.name!r}: {first.reason}"
    return Comparison(first is None, results, max_diff, reason)
