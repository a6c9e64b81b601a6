"""The contract every example model fulfils; the server only talks to this."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np

from models.oip import TensorSpec, metadata_document

__all__ = ["Model", "UnknownModelError"]


class UnknownModelError(LookupError):
    """No such model or version in the zoo; the message lists what exists."""


class Model(ABC):
    """One version of a model: its signature and a `predict` over numpy arrays.

    `inputs` is `None` for models that accept any tensors (echo); the server then skips
    signature checks. `predict` may skip outputs that are not in `requested`
    (`None` means all of them).
    """

    __slots__ = ("inputs", "name", "outputs", "platform", "version")

    def __init__(
        self,
        name: str,
        version: str,
        inputs: tuple[TensorSpec, ...] | None,
        outputs: tuple[TensorSpec, ...],
        platform: str = "meshgate_numpy",
    ) -> None:
        self.name = name
        self.version = version
        self.inputs = inputs
        self.outputs = outputs
        self.platform = platform

    @abstractmethod
    def predict(
        self, inputs: Mapping[str, np.ndarray], requested: frozenset[str] | None
    ) -> Mapping[str, np.ndarray]: ...

    def metadata(self) -> dict[str, Any]:
        return metadata_document(self.name, [self.version], self.platform, self.inputs or (), self.outputs)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.version}>"
