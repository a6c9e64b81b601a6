"""`digits`: the UCI handwritten digits (8x8, values 0..16) as scikit-learn ships them.

Both versions train at load time (well under a second, fully deterministic: fixed split,
zero-initialised full-batch optimisation, no random draws in training) so no weights are
committed. v1 is deliberately weak, v2 clearly better; canary and A/B demos need a real gap.
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from functools import cache
from importlib import resources

import numpy as np

from models.oip import TensorSpec
from models.zoo._model import Model, UnknownModelError

__all__ = ["DigitsCentroid", "DigitsLogistic", "build_digits", "digits_holdout", "digits_train"]

_SPLIT_SEED = 20240101
_TRAIN_FRACTION = 0.7
_CLASSES = 10
_INPUTS = (TensorSpec("pixels", "FP32", (-1, 64)),)
_OUTPUTS = (TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, _CLASSES)))


@cache
def _dataset() -> tuple[np.ndarray, np.ndarray]:
    source = resources.files("models") / "data" / "digits.csv.gz"
    with source.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.float64)
    pixels = table[:, :64].astype(np.float32)
    labels = table[:, 64].astype(np.int64)
    pixels.flags.writeable = labels.flags.writeable = False
    return pixels, labels


@cache
def _split() -> tuple[np.ndarray, np.ndarray]:
    """A stratified 70/30 split: each class is shuffled by a seeded permutation and cut."""
    _, labels = _dataset()
    rng = np.random.default_rng(_SPLIT_SEED)
    train, holdout = [], []
    for digit in range(_CLASSES):
        members = np.flatnonzero(labels == digit)
        members = members[rng.permutation(len(members))]
        cut = round(len(members) * _TRAIN_FRACTION)
        train.append(members[:cut])
        holdout.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(holdout))


def digits_train() -> tuple[np.ndarray, np.ndarray]:
    """Training images (FP32 [n,64]) and labels (INT64 [n])."""
    pixels, labels = _dataset()
    index = _split()[0]
    return pixels[index], labels[index]


def digits_holdout() -> tuple[np.ndarray, np.ndarray]:
    """Held-out images (FP32 [n,64]) and labels (INT64 [n]) that no version trained on."""
    pixels, labels = _dataset()
    index = _split()[1]
    return pixels[index], labels[index]


def _softmax(scores: np.ndarray) -> np.ndarray:
    scores = scores - scores.max(axis=1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=1, keepdims=True)
    return scores


class _DigitsModel(Model):
    __slots__ = ()

    def __init__(self, version: str) -> None:
        super().__init__("digits", version, inputs=_INPUTS, outputs=_OUTPUTS)

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        """Unnormalised class scores [n,10] (float64)."""
        raise NotImplementedError

    def predict(
        self, inputs: Mapping[str, np.ndarray], requested: frozenset[str] | None
    ) -> Mapping[str, np.ndarray]:
        scores = self.scores(inputs["pixels"].astype(np.float64))
        out = {"label": scores.argmax(axis=1).astype(np.int64)}
        if requested is None or "probabilities" in requested:
            out["probabilities"] = _softmax(scores).astype(np.float32)
        return out


class DigitsCentroid(_DigitsModel):
    """v1: nearest class centroid on 2x2-pooled images (16 features); weak on purpose."""

    __slots__ = ("_centroids", "_scale")

    def __init__(self) -> None:
        super().__init__("v1")
        pixels, labels = digits_train()
        features = self._features(pixels.astype(np.float64))
        self._centroids = np.stack([features[labels == d].mean(axis=0) for d in range(_CLASSES)])
        # temperature: the mean squared distance of a training image to its own centroid
        self._scale = float(((features - self._centroids[labels]) ** 2).sum(axis=1).mean())

    @staticmethod
    def _features(pixels: np.ndarray) -> np.ndarray:
        return pixels.reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(len(pixels), 16)

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        features = self._features(pixels)
        distances = ((features[:, None, :] - self._centroids[None, :, :]) ** 2).sum(axis=2)
        return -distances / self._scale


class DigitsLogistic(_DigitsModel):
    """v2: multinomial logistic regression on all 64 pixels, L2-regularised, heavy-ball descent."""

    __slots__ = ("_bias", "_weights")

    STEPS = 200
    LEARNING_RATE = 1.0
    MOMENTUM = 0.9
    L2 = 1e-4

    def __init__(self) -> None:
        super().__init__("v2")
        pixels, labels = digits_train()
        x = pixels.astype(np.float64) / 16.0
        targets = np.eye(_CLASSES)[labels]
        weights = np.zeros((64, _CLASSES))
        bias = np.zeros(_CLASSES)
        velocity_w = np.zeros_like(weights)
        velocity_b = np.zeros_like(bias)
        for _ in range(self.STEPS):
            error = (_softmax(x @ weights + bias) - targets) / len(x)
            velocity_w = self.MOMENTUM * velocity_w - self.LEARNING_RATE * (x.T @ error + self.L2 * weights)
            velocity_b = self.MOMENTUM * velocity_b - self.LEARNING_RATE * error.sum(axis=0)
            weights += velocity_w
            bias += velocity_b
        self._weights = weights / 16.0  # fold the input scaling in, so serving skips a pass
        self._bias = bias

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        return pixels @ self._weights + self._bias


_VERSIONS = {"v1": DigitsCentroid, "v2": DigitsLogistic}


@cache
def build_digits(version: str) -> Model:
    cls = _VERSIONS.get(version)
    if cls is None:
        raise UnknownModelError(f"digits has versions {', '.join(_VERSIONS)}, not {version!r}")
    return cls()
