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

    __slots__ = ("rest",)

    def __init__(self) -> None:
        #: the start of an event waiting for the rest of it (b"": none; read it, never set it)
        self.rest = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        # Line by line with a one-byte search (memchr: a token's event is one line, one search),
        # never a two-byte one (CPython's is a slower loop); an event ends at the first blank
        # line, "\n\n" or "\r\n\r\n" (the elif).
        data = self.rest + chunk if self.rest else chunk
        events: list[bytes] = []
        start = at = 0
        n = len(data)
        while (i := data.find(b"\n", at)) >= 0:
            nxt = i + 1
            if nxt == n:
                break
            if data[nxt] == 10:  # "\n\n"
                end = nxt + 1
            elif data[nxt] == 13 and i > start and data[i - 1] == 13 and data.startswith(b"\n", nxt + 1):
                end = nxt + 2
            else:
                at = nxt
                continue
            events.append(data if start == 0 and end == n else data[start:end])
            start = at = end
        self.rest = data[start:] if start < n else b""
        return events


def usage_of(event: bytes) -> dict[str, Any] | None:
    """The ``usage`` object of a chunk or whole answer that carries one (OpenAI's usage chunk;
    its last member, so searched from the end: text that says "usage" comes before it), else
    None; the other chunks' ``"usage":null`` costs two short searches."""
    at = event.rfind(_USAGE)
    if at < 0:
        return None
    i = at + len(_USAGE)
    if event.find(b"{", i, i + 4) < 0:  # "usage":null (a search, not `in`: no exception inside)
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
    return event.find(b'"choices":[]') >= 0 or event.find(b'"choices": []') >= 0


def error_event(message: str, code: str, err_type: str = "server_error") -> bytes:
    """``data: {"error": {...}}`` in OpenAI's error shape, the last event of a broken stream."""
    doc = {"error": {"message": message, "type": err_type, "param": None, "code": code}}
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"
