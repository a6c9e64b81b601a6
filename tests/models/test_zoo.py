"""The example models: digits accuracy on the held-out split, determinism, echo and sum."""

from __future__ import annotations

import numpy as np
import pytest

from models.zoo import UnknownModelError, digits_holdout, digits_train, load_model, model_names
from models.zoo._digits import DigitsCentroid, DigitsLogistic


def accuracy(version: str) -> float:
    pixels, labels = digits_holdout()
    predicted = load_model("digits", version).predict({"pixels": pixels}, None)["label"]
    return float((predicted == labels).mean())


def test_split_is_a_stratified_70_30_partition_of_the_real_data_set() -> None:
    train_x, train_y = digits_train()
    hold_x, hold_y = digits_holdout()
    assert len(train_x) + len(hold_x) == 1797
    assert train_x.shape[1] == hold_x.shape[1] == 64
    assert hold_x.dtype == np.float32 and hold_y.dtype == np.int64
    assert hold_x.min() == 0 and hold_x.max() == 16
    counts = np.bincount(hold_y, minlength=10) / np.bincount(np.concatenate([train_y, hold_y]), minlength=10)
    np.testing.assert_allclose(counts, 0.3, atol=0.01)
    train_rows = {row.tobytes() + bytes([label]) for row, label in zip(train_x, train_y, strict=True)}
    overlap = sum(
        row.tobytes() + bytes([label]) in train_rows for row, label in zip(hold_x, hold_y, strict=True)
    )
    assert overlap == 0


def test_v1_is_simple_and_v2_is_clearly_better() -> None:
    v1, v2 = accuracy("v1"), accuracy("v2")
    assert 0.70 <= v1 <= 0.85
    assert v2 >= 0.95
    assert v2 - v1 >= 0.10


@pytest.mark.parametrize("cls", [DigitsCentroid, DigitsLogistic])
def test_training_is_deterministic(cls: type) -> None:
    pixels, _ = digits_holdout()
    first = cls().predict({"pixels": pixels}, None)
    second = cls().predict({"pixels": pixels}, None)
    np.testing.assert_array_equal(first["label"], second["label"])
    np.testing.assert_array_equal(first["probabilities"], second["probabilities"])


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_digits_outputs_follow_the_signature(version: str) -> None:
    model = load_model("digits", version)
    pixels, _ = digits_holdout()
    out = model.predict({"pixels": pixels[:5]}, None)
    assert out["label"].dtype == np.int64 and out["label"].shape == (5,)
    assert out["probabilities"].dtype == np.float32 and out["probabilities"].shape == (5, 10)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out["probabilities"].argmax(axis=1), out["label"])
    assert set(model.predict({"pixels": pixels[:5]}, frozenset({"label"}))) == {"label"}
    assert model.metadata()["versions"] == [version]


def test_echo_returns_its_inputs_and_sum_adds_rows() -> None:
    echo = load_model("echo", "any-version.1")
    tensors = {"a": np.array([1, 2], dtype=np.int8), "b": np.array(["x"], dtype=object)}
    assert echo.predict(tensors, None) == tensors
    assert echo.metadata()["inputs"] == []
    x = np.array([[1.0, 2.0], [3.0, 4.5]])
    np.testing.assert_array_equal(load_model("sum", "v1").predict({"x": x}, None)["sum"], [3.0, 7.5])
    np.testing.assert_allclose(load_model("sum", "v2").predict({"x": x}, None)["sum"], [3.0, 7.5], atol=2e-9)
    assert load_model("sum", "v2").predict({"x": x}, None)["sum"][0] != 3.0


@pytest.mark.parametrize(
    ("name", "version", "message"),
    [
        ("nope", "v1", "unknown model 'nope'; the zoo has digits, echo, sum"),
        ("digits", "v3", "digits has versions v1, v2, not 'v3'"),
        ("sum", "v9", "sum has versions v1, v2"),
        ("echo", "a/b", "echo version must match"),
        ("echo", "", "echo version must match"),
    ],
)
def test_unknown_models_and_versions_say_what_exists(name: str, version: str, message: str) -> None:
    with pytest.raises(UnknownModelError, match=message):
        load_model(name, version)
    assert model_names() == ("digits", "echo", "sum")
