"""Word n-gram language models: add-k smoothed bigrams (v1) and interpolated modified
Kneser-Ney (v2), trained from token lists in a second or two, no weights stored.

Both answer one question, `distribution(context)`: the probability of every vocabulary word
(and of the end of a speech) after the given context. Sampling and perplexity both use it,
so what is measured is what is served. References: Chen & Goodman, "An Empirical Study of
Smoothing Techniques for Language Modeling" (1998), sections 2.7 and 3.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["AddKBigram", "KneserNey", "LanguageModel", "Vocabulary", "perplexity"]

UNK, EOS, BOS = 0, 1, 2
_SPECIALS = ("<unk>", "</s>", "<s>")


class Vocabulary:
    """Word <-> id; words seen fewer than `min_count` times in training become `<unk>`."""

    __slots__ = ("ids", "words")

    def __init__(self, speeches: Iterable[Sequence[str]], min_count: int = 2) -> None:
        counts = Counter(word for speech in speeches for word in speech)
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        self.words: tuple[str, ...] = _SPECIALS + tuple(kept)
        self.ids = {word: i for i, word in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        ids = self.ids
        return [ids.get(token, UNK) for token in tokens]


class LanguageModel(ABC):
    """A trained model over `vocab`; `order - 1` ids of context decide the next word."""

    __slots__ = ("order", "vocab")

    def __init__(self, vocab: Vocabulary, order: int) -> None:
        self.vocab = vocab
        self.order = order

    def context(self, ids: Sequence[int]) -> tuple[int, ...]:
        """The last `order - 1` ids, padded on the left with start-of-speech markers."""
        need = self.order - 1
        tail = tuple(ids[-need:]) if need else ()
        return (BOS,) * (need - len(tail)) + tail

    def distribution(self, context: Sequence[int]) -> np.ndarray:
        """P(next | context) over the vocabulary; never `<s>`. Sums to 1."""
        probs = self.scores(context)
        probs[BOS] = 0.0
        probs /= probs.sum()
        return probs

    def scores(self, context: Sequence[int]) -> np.ndarray:
        """A fresh array proportional to the distribution wherever the next word is not `<s>`
        (which may score > 0): what sampling needs, without normalising on every token."""
        return self._raw(self.context(context))

    @abstractmethod
    def _raw(self, context: tuple[int, ...]) -> np.ndarray: ...


def _grams(speeches: Iterable[Sequence[int]], n: int) -> Counter[tuple[int, ...]]:
    counts: Counter[tuple[int, ...]] = Counter()
    pad = (BOS,) * (n - 1)
    for speech in speeches:
        seq = pad + tuple(speech) + (EOS,)
        counts.update(zip(*(seq[i:] for i in range(n)), strict=False))
    return counts


class AddKBigram(LanguageModel):
    """P(w | h) = (c(h w) + k) / (c(h) + k V): the textbook crude smoothing (too much mass to
    unseen words), kept as the weaker reference version."""

    __slots__ = ("_k", "_rows")

    def __init__(self, vocab: Vocabulary, speeches: Iterable[Sequence[int]], k: float) -> None:
        super().__init__(vocab, 2)
        self._k = k
        rows: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
        grouped: defaultdict[int, list[tuple[int, int]]] = defaultdict(list)
        for (h, w), c in _grams(speeches, 2).items():
            grouped[h].append((w, c))
        for h, pairs in grouped.items():
            ids = np.fromiter((w for w, _ in pairs), dtype=np.int64, count=len(pairs))
            counts = np.fromiter((c for _, c in pairs), dtype=np.float64, count=len(pairs))
            rows[h] = (ids, counts, float(counts.sum()))
        self._rows = rows

    def _raw(self, context: tuple[int, ...]) -> np.ndarray:
        size = len(self.vocab)
        row = self._rows.get(context[0])
        if row is None:
            return np.full(size, 1.0 / size)
        ids, counts, total = row
        denominator = total + self._k * size
        probs = np.full(size, self._k / denominator)
        probs[ids] += counts / denominator
        return probs


class _Table:
    """One order of a Kneser-Ney model, compressed by context: for context row r, the words
    `ids[indptr[r]:indptr[r+1]]` get `values` (their discounted share) and everything else
    the backoff weight `gamma[r]` times the lower order."""

    __slots__ = ("gamma", "ids", "indptr", "rows", "values")

    def __init__(self, counts: Counter[tuple[int, ...]], discounts: tuple[float, float, float]) -> None:
        grouped: defaultdict[tuple[int, ...], list[tuple[int, int]]] = defaultdict(list)
        for gram, c in counts.items():
            grouped[gram[:-1]].append((gram[-1], c))
        rows: dict[tuple[int, ...], int] = {}
        indptr, ids, values, gamma = [0], [], [], []
        for context, pairs in grouped.items():
            total = sum(c for _, c in pairs)
            mass = 0.0
            for w, c in pairs:
                d = discounts[min(c, 3) - 1]
                ids.append(w)
                values.append((c - d) / total)
                mass += d
            rows[context] = len(rows)
            indptr.append(len(ids))
            gamma.append(mass / total)
        self.rows = rows
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.values = np.asarray(values, dtype=np.float64)
        self.gamma = np.asarray(gamma, dtype=np.float64)


def _discounts(counts: Counter[tuple[int, ...]]) -> tuple[float, float, float]:
    """Modified Kneser-Ney's D1, D2, D3+ from the counts of counts (Chen & Goodman eq. 26)."""
    n = Counter(c for c in counts.values() if c <= 4)
    n1, n2, n3, n4 = (max(n[i], 1) for i in (1, 2, 3, 4))
    y = n1 / (n1 + 2 * n2)
    return (
        min(max(1 - 2 * y * n2 / n1, 0.0), 1.0),
        min(max(2 - 3 * y * n3 / n2, 0.0), 2.0),
        min(max(3 - 4 * y * n4 / n3, 0.0), 3.0),
    )


def _continuation(higher: Counter[tuple[int, ...]]) -> Counter[tuple[int, ...]]:
    """N1+(. h w): how many different words precede each (h w), the lower orders' counts."""
    return Counter(gram[1:] for gram in higher)


class KneserNey(LanguageModel):
    """Interpolated modified Kneser-Ney of any order: raw counts at the top order,
    continuation counts below, three discounts per order, and a uniform floor."""

    __slots__ = ("_base", "_tables")

    def __init__(self, vocab: Vocabulary, speeches: Sequence[Sequence[int]], order: int) -> None:
        if order < 2:
            raise ValueError(f"order must be >= 2, got {order}")
        super().__init__(vocab, order)
        counts = _grams(speeches, order)
        tables: dict[int, _Table] = {}
        for k in range(order, 1, -1):
            tables[k] = _Table(counts, _discounts(counts))
            counts = _continuation(counts)
        size = len(vocab)
        d = _discounts(counts)
        unigram = np.zeros(size)
        for (w,), c in counts.items():
            unigram[w] = c - d[min(c, 3) - 1]
        total = sum(counts.values())
        floor = (total - unigram.sum()) / total  # the discounted mass, spread uniformly
        self._base = unigram / total + floor / size
        self._tables = tables

    def _raw(self, context: tuple[int, ...]) -> np.ndarray:
        # p_k = values_k + gamma_k * p_(k-1), unrolled from the top order down so that the
        # full-size arrays are touched once: base * prod(gamma) plus each order's few words.
        found = []
        for k in range(2, self.order + 1):
            table = self._tables[k]
            row = table.rows.get(context[len(context) - k + 1 :])
            if row is None:
                break  # a longer context is unseen too
            found.append((table, row))
        scale = 1.0
        parts = []
        for table, row in reversed(found):
            start, end = table.indptr[row], table.indptr[row + 1]
            parts.append((table.ids[start:end], table.values[start:end] * scale))
            scale *= table.gamma[row]
        probs = self._base * scale
        for ids, values in parts:
            probs[ids] += values
        return probs


def perplexity(model: LanguageModel, speeches: Iterable[Sequence[int]]) -> float:
    """exp of the mean negative log-probability of every word and speech end in `speeches`."""
    log_sum = 0.0
    n = 0
    for speech in speeches:
        history: list[int] = []
        for w in (*speech, EOS):
            log_sum -= math.log(model.distribution(history)[w])
            history.append(w)
            n += 1
    return math.exp(log_sum / n) if n else math.nan
