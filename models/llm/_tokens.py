"""Word and punctuation tokens: what tinylm models, counts in `usage` and streams one by one.

A token is a word (letters and digits, with inner apostrophes or hyphens: "reliev'd",
"good-night"), a word with a leading apostrophe ("'tis"), a run of dashes, or one other
non-space character. `join_piece` puts the spaces back the way English prints them, so that
the concatenation of the streamed pieces is exactly the non-streamed text.
"""

from __future__ import annotations

import re

__all__ = ["count_tokens", "join_piece", "tokenize"]

_TOKEN = re.compile(r"\w+(?:['\-]\w+)*|'\w+|-{2,}|[^\w\s]")
_NO_SPACE_BEFORE = frozenset(",.;:!?)]}'\"") | {"--", "...", "n't"}
_NO_SPACE_AFTER = frozenset("([{")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    return sum(1 for _ in _TOKEN.finditer(text))


def join_piece(previous: str | None, token: str) -> str:
    """The text that `token` adds after `previous` (None at the start of a text)."""
    if previous is None or token in _NO_SPACE_BEFORE or previous in _NO_SPACE_AFTER or previous == "--":
        return token
    return " " + token
