"""tinylm's versions: what each is, trained on first use and kept for the process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from models.llm._corpus import held_out, training
from models.llm._embed import HashedTfIdf
from models.llm._lm import AddKBigram, KneserNey, LanguageModel, Vocabulary, perplexity
from models.zoo import UnknownModelError

__all__ = ["MODEL_ID", "VERSIONS", "TinyLM", "embedder", "held_out_perplexity", "load_tinylm"]

MODEL_ID = "tinylm"


@dataclass(frozen=True, slots=True)
class _Spec:
    description: str
    build: Callable[[Vocabulary, list[list[int]]], LanguageModel]


VERSIONS: dict[str, _Spec] = {
    "v1": _Spec("word bigram, add-k smoothing (k=0.01)", lambda v, s: AddKBigram(v, s, k=0.01)),
    "v2": _Spec("word trigram, interpolated modified Kneser-Ney", lambda v, s: KneserNey(v, s, order=3)),
}


@dataclass(frozen=True, slots=True)
class TinyLM:
    """One trained version: the model and how to name it."""

    version: str
    description: str
    lm: LanguageModel


@cache
def _vocabulary() -> Vocabulary:
    return Vocabulary(training())


@cache
def embedder() -> HashedTfIdf:
    """The embedding model (the same for every version): idf from the training speeches."""
    return HashedTfIdf(training())


@cache
def load_tinylm(version: str) -> TinyLM:
    """Train (once per process) and return a version; `UnknownModelError` names the others."""
    spec = VERSIONS.get(version)
    if spec is None:
        raise UnknownModelError(f"unknown version {version!r} of {MODEL_ID}; it has {', '.join(VERSIONS)}")
    vocab = _vocabulary()
    return TinyLM(version, spec.description, spec.build(vocab, [vocab.encode(s) for s in training()]))


def held_out_perplexity(version: str) -> float:
    """Perplexity on the held-out speeches (every 10th), words and speech ends counted."""
    model = load_tinylm(version).lm
    return perplexity(model, [model.vocab.encode(s) for s in held_out()])
