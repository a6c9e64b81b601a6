import math

import pytest

from models.compare import compare


def resp(*outputs):
    return {
        "model_name": "m",
        "outputs": [dict(zip(("name", "shape", "datatype", "data"), o, strict=True)) for o in outputs],
    }


def test_identical_integer_and_bytes_outputs_agree():
    a = resp(("label", [2], "INT64", [3, 7]), ("text", [1], "BYTES", ["seven"]), ("ok", [1], "BOOL", [True]))
    result = compare(a, a)
    assert result.agree and result.reason is None and result.max_abs_diff is None
    assert [o.name for o in result.outputs] == ["label", "text", "ok"]


def test_integer_mismatch_disagrees_with_a_count():
    result = compare(resp(("label", [3], "INT64", [1, 2, 3])), resp(("label", [3], "INT64", [1, 5, 6])))
    assert not result.agree
    assert result.outputs[0].mismatches == 2
    assert result.reason == "output 'label': 2 of 3 elements differ"


def test_bool_is_not_an_integer():
    assert not compare(resp(("x", [1], "BOOL", [True])), resp(("x", [1], "BOOL", [1]))).agree


def test_float_outputs_within_and_beyond_tolerance():
    a = resp(("probs", [1, 3], "FP32", [[0.1, 0.2, 0.7]]))
    near = resp(("probs", [1, 3], "FP32", [[0.1000001, 0.2, 0.6999995]]))
    far = resp(("probs", [1, 3], "FP32", [0.1, 0.25, 0.65]))  # flat data compares with nested
    ok = compare(a, near)
    assert ok.agree and ok.max_abs_diff == pytest.approx(5e-7, rel=1e-3)
    bad = compare(a, far)
    assert not bad.agree and bad.max_abs_diff == pytest.approx(0.05)
    assert bad.outputs[0].mismatches == 2 and "max abs diff 0.05 > 1e-05" in bad.reason
    assert compare(a, far, atol=0.1).agree


def test_fp16_has_a_precision_floor():
    a = resp(("y", [1], "FP16", [0.5]))
    assert compare(a, resp(("y", [1], "FP16", [0.5005]))).agree
    assert not compare(a, resp(("y", [1], "FP16", [0.51]))).agree


def test_nan_and_infinity():
    a = resp(("y", [3], "FP64", [math.nan, math.inf, 1.0]))
    assert compare(a, a).agree
    b = resp(("y", [3], "FP64", [1.0, math.inf, 1.0]))
    assert not compare(a, b).agree and compare(a, b).max_abs_diff == math.inf


def test_shape_datatype_and_length_differences():
    a = resp(("y", [2], "FP32", [1.0, 2.0]))
    assert compare(a, resp(("y", [1, 2], "FP32", [1.0, 2.0]))).reason == "output 'y': shape [2] vs [1, 2]"
    assert compare(a, resp(("y", [2], "FP64", [1.0, 2.0]))).reason == "output 'y': datatype FP32 vs FP64"
    assert compare(a, resp(("y", [2], "FP32", [1.0]))).reason == "output 'y': 2 vs 1 elements"
    assert "non-numeric" in compare(a, resp(("y", [2], "FP32", [1.0, "x"]))).reason


def test_output_names_must_match():
    a = resp(("y", [1], "INT32", [1]), ("z", [1], "INT32", [2]))
    b = resp(("y", [1], "INT32", [1]), ("w", [1], "INT32", [2]))
    result = compare(a, b)
    assert not result.agree
    assert result.reason == "output names differ: missing in shadow ['z'], only in shadow ['w']"
    assert [o.name for o in result.outputs] == ["y"] and result.outputs[0].agree


@pytest.mark.parametrize(
    ("shadow", "reason"),
    [
        ({"error": "boom"}, "shadow response has no valid outputs list"),
        ("not a dict", "shadow response has no valid outputs list"),
        ({"outputs": [{"shape": [1]}]}, "shadow response has no valid outputs list"),
        ({"outputs": [{"name": "y"}, {"name": "y"}]}, "shadow response repeats an output name"),
    ],
)
def test_malformed_responses_disagree_without_raising(shadow, reason):
    result = compare(resp(("y", [1], "INT32", [1])), shadow)
    assert not result.agree and result.reason == reason
