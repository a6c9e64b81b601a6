"""tinylm's embeddings: hashed tf-idf bags of words (the "hashing trick"), L2-normalised.

Small and classic rather than learned, but real: texts that share rare words point the
same way (cosine similarity), common words weigh little (idf from the training speeches),
and the same text always gives the same vector. Each lower-cased token adds its idf, with a
sign from its hash, to one of `DIMENSIONS` coordinates (Weinberger et al., 2009).
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["DIMENSIONS", "HashedTfIdf"]

DIMENSIONS = 256


class HashedTfIdf:
    """`embed(tokens, dimensions)`: a unit vector of `dimensions` (<= DIMENSIONS) floats."""

    __slots__ = ("_default_idf", "_idf")

    def __init__(self, documents: Iterable[Sequence[str]]) -> None:
        df: Counter[str] = Counter()
        n = 0
        for doc in documents:
            df.update({token.lower() for token in doc})
            n += 1
        # smoothed idf, as scikit-learn's TfidfVectorizer: ln((1 + n) / (1 + df)) + 1
        self._idf = {token: math.log((1 + n) / (1 + count)) + 1.0 for token, count in df.items()}
        self._default_idf = math.log(1 + n) + 1.0  # a word never seen is as rare as can be

    def embed(self, tokens: Sequence[str], dimensions: int = DIMENSIONS) -> np.ndarray:
        vector = np.zeros(DIMENSIONS, dtype=np.float64)
        idf, default = self._idf, self._default_idf
        for token in tokens:
            word = token.lower()
            h = zlib.crc32(word.encode())
            vector[h % DIMENSIONS] += idf.get(word, default) if h & 0x80000000 else -idf.get(word, default)
        vector = vector[:dimensions]  # OpenAI's `dimensions`: shorten, then normalise again
        norm = float(np.linalg.norm(vector))
        return (vector / norm if norm else vector).astype(np.float32)
