"""Comparing two answers of one OpenAI-compatible request: the shadow version's with the primary's.

Free text is never expected to match the way an OIP tensor does, so a shadow of an LLM version
reports how close the answers are rather than only whether they agree:

- ``exact``: the answer texts are identical (every choice, in order). Right for a deterministic
  setup (temperature 0 or a seed: a replica, a re-deployment, a new serving engine), where any
  difference is a regression; its rate is the ``agreement_rate`` an OIP shadow reports too.
- ``jaccard``: token-level Jaccard similarity of the two texts, |A & B| / |A | B| over the sets of
  their word and punctuation tokens (``\\w+`` runs and single other non-space characters),
  averaged over the choices. Cheap (one regex pass, two sets), needs no model and no tokenizer of
  either version, and tells "the same answer worded a bit differently" (0.6-0.9) from "another
  answer" (near 0); it ignores order and counts, which is what makes it cheap. Two empty texts
  are identical (1.0).
- for embeddings, ``cosine``: cosine similarity of each input's two vectors (mean and minimum
  over the inputs), since a re-trained or re-quantised embedder keeps directions, not digits.
  ``exact`` means every vector is equal. Vectors may come as JSON floats or base64 float32.

Answers come as a whole body or as the SSE events of a stream (chat ``delta.content``,
completions ``text``, joined per choice index). Text content only: tool calls and logprobs are
not compared. Malformed answers never raise: they compare with a reason.
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LlmComparison", "compare_answers", "cosine", "jaccard", "texts_of", "tokens"]

_TOKEN = re.compile(r"\w+|[^\w\s]")
_DATA_LINE = re.compile(rb"^data: ?([^\r\n]*)", re.MULTILINE)
_PIECE = {
    "chat": re.compile(rb'"content"\s*:\s*"((?:[^"\\]|\\.)*)"'),
    "text": re.compile(rb'"text"\s*:\s*"((?:[^"\\]|\\.)*)"'),
}
_INDEX = re.compile(rb'"index"\s*:\s*(\d+)')
_ERROR = re.compile(rb'"error"\s*:')
_decode = json.JSONDecoder().decode


@dataclass(frozen=True, slots=True)
class LlmComparison:
    exact: bool
    jaccard: float | None = None  # text answers
    cosine_mean: float | None = None  # embeddings
    cosine_min: float | None = None
    reason: str | None = None  # why they differ (or could not be compared), in words


def tokens(text: str) -> set[str]:
    return set(_TOKEN.findall(text))


def jaccard(a: str, b: str) -> float:
    """Token-level Jaccard similarity of two texts (1.0 for two empty ones)."""
    ta, tb = tokens(a), tokens(b)
    union = len(ta | tb)
    return len(ta & tb) / union if union else 1.0


def cosine(u: np.ndarray, v: np.ndarray) -> float:
    """Cosine similarity; two zero vectors are identical (1.0), one zero vector is unrelated (0.0)."""
    nu, nv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
    if nu == 0.0 or nv == 0.0:
        return 1.0 if nu == nv else 0.0
    return max(-1.0, min(1.0, float(np.dot(u, v)) / (nu * nv)))


def _choice_text(kind: str, choice: Any, streamed: bool) -> str:
    if kind == "chat":
        part = choice.get("delta" if streamed else "message")
        content = part.get("content") if isinstance(part, dict) else None
    else:
        content = choice.get("text")
    return content if isinstance(content, str) else ""


def texts_of(kind: str, body: bytes | None, events: list[bytes] | None) -> list[str]:
    """The text of each choice (by index) of a whole answer `body` or of a stream's `events`
    (`kind`: ``"chat"`` or ``"text"``). Raises ValueError on an answer that is not OpenAI's."""
    docs: list[Any]
    if events is None:
        docs = [json.loads(body or b"")]
    else:
        blob = b"".join(events)
        indexes = _INDEX.findall(blob)
        if _ERROR.search(blob) is None and all(i == b"0" for i in indexes):
            # one choice, no error event (the common stream): its text pieces, without parsing
            # every chunk (a JSON key can only match outside a string, where quotes are escaped)
            pieces = b'","'.join(_PIECE[kind].findall(blob))
            return ["".join(_decode((b'["' + pieces + b'"]').decode()))] if indexes else []
        docs = [_decode(d.decode()) for d in _DATA_LINE.findall(blob) if d.strip() != b"[DONE]"]
    parts: dict[int, list[str]] = {}
    for doc in docs:
        if not isinstance(doc, dict):
            raise ValueError("an answer is not a JSON object")
        if "error" in doc:
            raise ValueError("the answer is an error")
        choices = doc.get("choices")
        if not isinstance(choices, list):
            if events is None:
                raise ValueError("an answer has no choices")
            continue
        for n, choice in enumerate(choices):
            if not isinstance(choice, dict):
                raise ValueError("a choice is not a JSON object")
            index = choice.get("index", n)
            parts.setdefault(index if isinstance(index, int) else n, []).append(
                _choice_text(kind, choice, events is not None)
            )
    return ["".join(parts[i]) for i in sorted(parts)]


def _vectors(body: bytes) -> list[np.ndarray]:
    doc = json.loads(body)
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise ValueError("an embeddings answer has no data list")
    out: list[tuple[int, np.ndarray]] = []
    for n, item in enumerate(data):
        vector = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(vector, str):  # encoding_format "base64": little-endian float32
            array = np.frombuffer(base64.b64decode(vector), dtype="<f4").astype(np.float64)
        elif isinstance(vector, list):
            array = np.asarray(vector, dtype=np.float64)
        else:
            raise ValueError("an embedding is neither a list of floats nor base64")
        index = item.get("index", n)
        out.append((index if isinstance(index, int) else n, array))
    return [v for _, v in sorted(out, key=lambda pair: pair[0])]


def _compare_embeddings(primary: bytes, shadow: bytes) -> LlmComparison:
    p, s = _vectors(primary), _vectors(shadow)
    if len(p) != len(s):
        return LlmComparison(False, reason=f"{len(p)} embeddings from the primary, {len(s)} from the shadow")
    if any(a.shape != b.shape for a, b in zip(p, s, strict=True)):
        dims = next(f"{a.size} vs {b.size}" for a, b in zip(p, s, strict=True) if a.shape != b.shape)
        return LlmComparison(False, reason=f"embedding dimensions differ ({dims})")
    if not p:
        return LlmComparison(True)
    cosines = [cosine(a, b) for a, b in zip(p, s, strict=True)]
    exact = all(np.array_equal(a, b) for a, b in zip(p, s, strict=True))
    low = min(cosines)
    reason = None if exact else f"embeddings differ: min cosine {low:.4f} over {len(p)} input(s)"
    return LlmComparison(exact, cosine_mean=math.fsum(cosines) / len(cosines), cosine_min=low, reason=reason)


def compare_answers(
    kind: str,
    primary: bytes | None,
    primary_events: list[bytes] | None,
    shadow: bytes | None,
    shadow_events: list[bytes] | None,
) -> LlmComparison:
    """Compare two answers of `kind` (``"chat"``, ``"text"`` or ``"embeddings"``), each a whole
    body or a stream's events. Never raises: an answer that cannot be read differs with a reason."""
    try:
        if kind == "embeddings":
            return _compare_embeddings(primary or b"", shadow or b"")
        p = texts_of(kind, primary, primary_events)
        s = texts_of(kind, shadow, shadow_events)
    except (ValueError, TypeError, AttributeError) as exc:
        return LlmComparison(False, reason=f"an answer could not be read: {exc}")
    n = max(len(p), len(s))
    pairs = [(p[i] if i < len(p) else "", s[i] if i < len(s) else "") for i in range(n)]
    score = math.fsum(jaccard(a, b) for a, b in pairs) / n if n else 1.0
    if p == s:
        return LlmComparison(True, jaccard=score)
    if len(p) != len(s):
        reason = f"{len(p)} choice(s) from the primary, {len(s)} from the shadow"
    else:
        words = sum(len(_TOKEN.findall(a)) for a, _ in pairs), sum(len(_TOKEN.findall(b)) for _, b in pairs)
        reason = f"texts differ: token Jaccard {score:.3f} ({words[0]} vs {words[1]} tokens)"
    return LlmComparison(False, jaccard=score, reason=reason)
