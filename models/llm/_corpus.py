"""The shipped training text (`models/data/shakespeare.txt.gz`, public domain; see
models/data/README.md): one speech per line, split into training and held-out speeches."""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path

from models.llm._tokens import tokenize

__all__ = ["HELD_OUT_EVERY", "held_out", "training"]

CORPUS = Path(__file__).resolve().parent.parent / "data" / "shakespeare.txt.gz"
HELD_OUT_EVERY = 10  # every 10th speech is held out for perplexity


@cache
def _speeches() -> tuple[tuple[str, ...], ...]:
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        return tuple(tuple(tokenize(line)) for line in f if line.strip())


def training() -> tuple[tuple[str, ...], ...]:
    return tuple(s for i, s in enumerate(_speeches()) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1)


def held_out() -> tuple[tuple[str, ...], ...]:
    return tuple(s for i, s in enumerate(_speeches()) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1)
