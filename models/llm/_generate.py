"""Sampling text from a language model the way the OpenAI API defines its knobs.

`temperature` (0 = greedy), `top_p` (nucleus), `presence_penalty` and `frequency_penalty`
(subtracted from the logits per earlier occurrence), `seed` (the same seed gives the same
text), `stop` (up to four strings; the text ends before the first one and does not contain
it), `max_tokens`, and vLLM's `min_tokens` (no end of speech before that many tokens; its
`ignore_eos` is `min_tokens = max_tokens`). A `Generation` yields text pieces one sampled
token at a time, holding back only what could still become a stop string, so a stream and
a whole answer agree; with `logprobs` it also records each token's log-probability and the
likeliest alternatives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from models.llm._lm import BOS, EOS, UNK, LanguageModel
from models.llm._tokens import join_piece

__all__ = ["Generation", "Sampling", "TokenLogprob", "draw", "rng_for"]

Finish = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class Sampling:
    max_tokens: int
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None  # None: off; k: each token's log-probability and the k likeliest


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A sampled token as it reads in the text (with its space), its natural log-probability
    under the model (before temperature and penalties, as vLLM reports it), and the likeliest
    alternatives at that step."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


def rng_for(seed: int | None, choice: int) -> np.random.Generator:
    """One generator per choice: seeded choices repeat exactly, unseeded ones draw OS entropy."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, choice])


class Generation:
    """One choice being generated; call `step()` until `finish_reason` is set."""

    __slots__ = (
        "_counts",
        "_dist",
        "_held",
        "_history",
        "_model",
        "_previous",
        "_rng",
        "_sampling",
        "finish_reason",
        "logprobs",
        "tokens",
    )

    def __init__(
        self,
        model: LanguageModel,
        context: list[int],
        previous_token: str | None,
        sampling: Sampling,
        rng: np.random.Generator,
    ) -> None:
        self._model = model
        self._history = list(context[-(model.order - 1) :]) if model.order > 1 else []
        self._previous = previous_token  # decides the space before the first piece
        self._sampling = sampling
        self._rng = rng
        self._held = ""  # text that may be the start of a stop string
        self._counts: dict[int, int] = {}
        self.tokens = 0  # sampled tokens: the completion_tokens of `usage`
        self.finish_reason: Finish | None = None
        self.logprobs: list[TokenLogprob] = []  # with sampling.logprobs: not yet taken (`take_logprobs`)
        self._dist: np.ndarray | None = None

    def step(self) -> str:
        """Sample one token; return the text that is now certain (maybe "")."""
        sampling = self._sampling
        if self.tokens >= sampling.max_tokens:
            return self._finish("length")
        word = self._pick(self._model.scores(self._history))
        if word == EOS:
            return self._finish("stop")
        self.tokens += 1
        self._history.append(word)
        if len(self._history) >= self._model.order:
            del self._history[0]
        self._counts[word] = self._counts.get(word, 0) + 1
        token = self._model.vocab.words[word]
        if self._dist is not None:
            self._record(word)
        text = self._held + join_piece(self._previous, token)
        self._previous = token
        if not sampling.stop:
            return self._done_if_full(text)
        cut = min((i for i in (text.find(s) for s in sampling.stop) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            self.finish_reason = "stop"
            return text[:cut]
        keep = _longest_stop_prefix(text, sampling.stop)
        self._held = text[len(text) - keep :] if keep else ""
        return self._done_if_full(text[: len(text) - keep])

    def take_logprobs(self) -> list[TokenLogprob]:
        """The entries of the tokens sampled since the last call."""
        taken, self.logprobs = self.logprobs, []
        return taken

    def _record(self, word: int) -> None:
        dist = self._dist
        assert dist is not None and self._sampling.logprobs is not None
        words, previous = self._model.vocab.words, self._previous
        k = self._sampling.logprobs
        top: tuple[tuple[str, float], ...] = ()
        if k:
            best = np.argpartition(-dist, k)[:k]
            best = best[np.argsort(-dist[best], kind="stable")]
            top = tuple((join_piece(previous, words[i]), _log(dist[i])) for i in best)
        self.logprobs.append(TokenLogprob(join_piece(previous, words[word]), _log(dist[word]), top))

    def _done_if_full(self, text: str) -> str:
        if self.tokens >= self._sampling.max_tokens:
            return text + self._finish("length")
        return text

    def _finish(self, reason: Finish) -> str:
        self.finish_reason = reason
        held, self._held = self._held, ""
        return held

    def _pick(self, probs: np.ndarray) -> int:
        sampling = self._sampling
        probs[UNK] = 0.0  # never print "<unk>"
        probs[BOS] = 0.0
        if self.tokens < sampling.min_tokens:
            probs[EOS] = 0.0
        if sampling.logprobs is not None:
            self._dist = probs / probs.sum()
        if self._counts and (sampling.presence_penalty or sampling.frequency_penalty):
            ids = np.fromiter(self._counts, dtype=np.int64, count=len(self._counts))
            seen = np.fromiter(self._counts.values(), dtype=np.float64, count=len(self._counts))
            penalty = seen * sampling.frequency_penalty + sampling.presence_penalty
            probs[ids] *= np.exp(-penalty)  # logits minus the penalty
        if sampling.temperature == 0.0:
            return int(np.argmax(probs))
        if sampling.temperature != 1.0:
            probs = probs ** (1.0 / sampling.temperature)
        if sampling.top_p < 1.0:
            chosen, cumulative = _nucleus(probs, sampling.top_p)
            return int(chosen[int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], "right"))])
        return draw(probs, self._rng.random())


_CANDIDATES = (256, 2048)


def _nucleus(probs: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """The likeliest words whose mass first reaches `top_p` (in descending order, ties by id)
    and their cumulative weights. Sorting all 8k words costs ~200 us a token; the nucleus is
    usually among the few hundred (or thousand) likeliest, so those are sorted first."""
    target = top_p * float(probs.sum())
    n = len(probs)
    for size in _CANDIDATES:
        if size >= n:
            break
        floor = np.partition(probs, n - size)[n - size]
        ids = np.flatnonzero(probs >= floor)  # every tie of the floor too, in id order
        order = ids[np.argsort(-probs[ids], kind="stable")]
        cumulative = np.cumsum(probs[order])
        if cumulative[-1] >= target:
            return _until(order, cumulative, target)
    order = np.argsort(-probs, kind="stable")
    return _until(order, np.cumsum(probs[order]), target)


def _until(order: np.ndarray, cumulative: np.ndarray, target: float) -> tuple[np.ndarray, np.ndarray]:
    keep = int(np.searchsorted(cumulative, target)) + 1
    return order[:keep], cumulative[:keep]


def _log(p: float) -> float:
    return math.log(p) if p > 0.0 else -9999.0  # OpenAI's floor for "impossible"


_BLOCK = 64


def draw(weights: np.ndarray, u: float) -> int:
    """The index where `u` (in [0, 1)) falls in the cumulative `weights` (not normalised).

    A prefix sum over the whole vocabulary is sequential and the slowest step of sampling
    (about 18 us for 8k words); summing blocks of 64 vectorises, so only the block sums and
    one block are prefix-summed.
    """
    n = len(weights)
    whole = n - n % _BLOCK
    sums = weights[:whole].reshape(-1, _BLOCK).sum(axis=1)
    cumulative = np.cumsum(sums)
    below = float(cumulative[-1]) if len(cumulative) else 0.0
    target = u * (below + float(weights[whole:].sum()))
    block = int(np.searchsorted(cumulative, target, "right"))
    start = block * _BLOCK
    if block == len(sums):
        part, before = weights[whole:], below
    else:
        part, before = weights[start : start + _BLOCK], float(cumulative[block - 1]) if block else 0.0
    j = int(np.searchsorted(np.cumsum(part), target - before, "right"))
    if j >= len(part) or part[j] == 0.0:  # rounding past the block's end: its last word that can be drawn
        j = int(np.flatnonzero(part)[-1]) if part.any() else int(np.flatnonzero(weights)[-1]) - start
    return start + j


def _longest_stop_prefix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that begins some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if stop.startswith(text[len(text) - n :]):
                best = n
                break
    return best
