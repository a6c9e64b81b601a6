"""The example model zoo: `load_model(name, version)` for the reference model server."""

from __future__ import annotations

from collections.abc import Callable

from models.zoo._digits import build_digits, digits_holdout, digits_train
from models.zoo._model import Model, UnknownModelError
from models.zoo._simple import build_echo, build_sum

__all__ = ["Model", "UnknownModelError", "digits_holdout", "digits_train", "load_model", "model_names"]

_BUILDERS: dict[str, Callable[[str], Model]] = {"digits": build_digits, "echo": build_echo, "sum": build_sum}


def model_names() -> tuple[str, ...]:
    return tuple(_BUILDERS)


def load_model(name: str, version: str) -> Model:
    """Build (or reuse) a model version; `UnknownModelError` says which names and versions exist."""
    builder = _BUILDERS.get(name)
    if builder is None:
        raise UnknownModelError(f"unknown model {name!r}; the zoo has {', '.join(model_names())}")
    return builder(version)
