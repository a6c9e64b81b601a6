"""Server-Sent Events as the OpenAI-compatible routes relay them: split, looked at, never rebuilt.

`SseEvents.feed(chunk)` returns the complete events in a chunk of an upstream's
``text/event-stream`` body (an event ends with a blank line, ``\\n\\n`` or ``\\r\\n\\r\\n``) and
keeps a partial one for the next chunk, so the client only ever receives whole events (a
stream that breaks midway never leaves half an event before the gateway's error event).
`usage_of(event)` finds OpenAI's usage chunk (``"usage": {...}``; the other chunks carry
``"usage": null`` or nothing) with one substring search per event; `error_event` is the SSE
error event a broken stream ends with, in OpenAI's error shape (the OpenAI SDKs raise it as
an ``APIError``).
"""

from __future__ import annotations

import json
from json.decoder import scanstring
from typing import Any

__all__ = ["DONE_EVENT", "SseEvents", "error_event", "is_usage_chunk", "response_model", "usage_of"]

DONE_EVENT = b"data: [DONE]\n\n"
_USAGE = b'"usage"'
_MODEL = b'"model"'
_decode = json.JSONDecoder().raw_decode


class SseEvents:
    """Splits a byte stream into whole events."""

    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        if not self._rest and 0 <= chunk.find(b"\n\n") == len(chunk) - 2 and b"\r" not in chunk:
            return [chunk]  # the common case: an upstream writes one event at a time
        data = self._rest + chunk if self._rest else chunk
        events: list[bytes] = []
        start = 0
        while True:
            end = data.find(b"\n\n", start)
            if end < 0:
                crlf = data.find(b"\r\n\r\n", start)
                if crlf < 0:
                    break
                end = crlf + 2
            elif b"\r\n\r\n" in data[start : end + 1]:  # a CRLF event before the LF one
                end = data.find(b"\r\n\r\n", start) + 2
            events.append(data[start : end + 2])
            start = end + 2
        self._rest = data[start:] if start < len(data) else b""
        return events

    @property
    def pending(self) -> bool:
        """Part of an event is waiting for the rest of it."""
        return bool(self._rest)


def usage_of(event: bytes, last: bool = False) -> dict[str, Any] | None:
    """The ``usage`` object of a chunk that carries one (OpenAI's last chunk), else None;
    `last`: of a whole answer, where it is the last member."""
    at = event.rfind(_USAGE) if last else event.find(_USAGE)
    if at < 0:
        return None
    i = at + len(_USAGE)
    if b"{" not in event[i : i + 4]:  # "usage":null, the other chunks' (one short slice, no loop)
        return None
    n = len(event)
    while i < n and event[i] in b" \t:":
        i += 1
    if i >= n or event[i] != 0x7B:  # "usage": null
        return None
    try:
        usage, _ = _decode(event[i:].decode())
    except ValueError:
        return None
    return usage if isinstance(usage, dict) else None


def response_model(doc: bytes) -> str | None:
    """The ``model`` an answer or chunk names (its first ``"model"``: OpenAI puts it near the top)."""
    at = doc.find(_MODEL)
    if at < 0:
        return None
    i = doc.find(b'"', at + len(_MODEL))
    if i < 0 or i - at > 16:
        return None
    try:
        name, _ = scanstring(doc[i + 1 : i + 300].decode("utf-8", "replace"), 0)
    except ValueError:
        return None
    return name


def is_usage_chunk(event: bytes) -> bool:
    """The usage-only chunk (no choices), which the client gets only if it asked for it."""
    return b'"choices":[]' in event or b'"choices": []' in event


def error_event(message: str, code: str, err_type: str = "server_error") -> bytes:
    """``data: {"error": {...}}`` in OpenAI's error shape, the last event of a broken stream."""
    doc = {"error": {"message": message, "type": err_type, "param": None, "code": code}}
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"
