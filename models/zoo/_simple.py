"""Tiny models for benchmarks and comparison tests: `echo` and `sum`."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from models.oip import TensorSpec
from models.zoo._model import Model, UnknownModelError

__all__ = ["EchoModel", "SumModel", "build_echo", "build_sum"]

_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class EchoModel(Model):
    """Returns its inputs as outputs, any shape and datatype: the cheapest possible upstream."""

    __slots__ = ()

    def __init__(self, version: str) -> None:
        super().__init__("echo", version, inputs=None, outputs=())

    def predict(
        self, inputs: Mapping[str, np.ndarray], requested: frozenset[str] | None
    ) -> Mapping[str, np.ndarray]:
        return inputs


class SumModel(Model):
    """Sums the rows of `x`; v2 adds 1e-9 so float-comparison tests have a near miss to catch."""

    __slots__ = ("_offset",)

    OFFSETS = {"v1": 0.0, "v2": 1e-9}

    def __init__(self, version: str) -> None:
        super().__init__(
            "sum",
            version,
            inputs=(TensorSpec("x", "FP64", (-1, -1)),),
            outputs=(TensorSpec("sum", "FP64", (-1,)),),
        )
        self._offset = self.OFFSETS[version]

    def predict(
        self, inputs: Mapping[str, np.ndarray], requested: frozenset[str] | None
    ) -> Mapping[str, np.ndarray]:
        return {"sum": inputs["x"].sum(axis=1) + self._offset}


def build_echo(version: str) -> Model:
    if not _VERSION.fullmatch(version):
        raise UnknownModelError(f"echo version must match {_VERSION.pattern}, got {version!r}")
    return EchoModel(version)


def build_sum(version: str) -> Model:
    if version not in SumModel.OFFSETS:
        raise UnknownModelError(f"sum has versions {', '.join(SumModel.OFFSETS)}, not {version!r}")
    return SumModel(version)
