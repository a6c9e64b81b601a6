"""What the OpenAI-compatible routes read of a request body, and the one change they make to it.

The gateway routes on three top-level fields only: ``model`` (the meshgate model, optionally
pinned as ``"chat/v2"``), ``stream`` and ``stream_options``. `read_body` scans the body's top
level once (the C scanner parses each value; the positions of ``model`` and
``stream_options`` are kept), so that `LlmBody.for_upstream` can hand the upstream the body
unchanged except for the spliced-in upstream model name and, for a stream, the
``stream_options.include_usage: true`` that makes the upstream send its usage chunk: the
bytes as received when nothing changes, else one copy (bodies run to megabytes). A nested
``"model"`` (in a tool schema, in a message) is never touched. Malformed input raises
`BodyProblem` with OpenAI's ``param`` and ``code``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from json.decoder import scanstring
from json.encoder import encode_basestring_ascii as _quoted  # json.dumps of a str, without its setup
from typing import Any

__all__ = ["BodyProblem", "LlmBody", "read_body"]

_scan_once = json.JSONDecoder().scan_once
_WS = re.compile(r"[ \t\n\r]*")
_ws = _WS.match
_BLANK = frozenset(" \t\n\r")
_USAGE_ON = {"include_usage": True}
_ROUTED = frozenset(("model", "stream", "stream_options"))


class BodyProblem(ValueError):
    """A body the gateway refuses (400): `param` names the field, `code` is OpenAI's."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


Span = tuple[int, int]


@dataclass(slots=True)
class LlmBody:
    """The routed fields of one request body and where they sit in its text."""

    raw: bytes  # the body as received
    text: str
    model: str  # the meshgate model (before any "/version")
    pinned: str | None  # the version pinned by "model/version"
    stream: bool
    include_usage: bool  # the client asked for the usage chunk
    model_span: Span
    options: dict[str, Any] | None  # stream_options as sent
    options_span: Span | None
    end: int  # index of the closing brace

    def for_upstream(self, upstream_model: str, asked: str) -> bytes:
        """The body for a version whose upstream expects `upstream_model` (`asked`: the
        client's own ``model`` string, left as it is when it already names that model)."""
        edits: list[tuple[int, int, str]] = []
        if upstream_model != asked:
            edits.append((*self.model_span, _quoted(upstream_model)))
        if self.stream and not self.include_usage:
            if self.options_span is not None:  # stream_options given without include_usage
                edits.append((*self.options_span, json.dumps({**(self.options or {}), **_USAGE_ON})))
            else:
                edits.append((self.end, self.end, ',"stream_options":{"include_usage":true}'))
        if not edits:
            return self.raw
        edits.sort()
        text = self.text
        ascii_only = len(text) == len(self.raw)  # then the text's indices are the bytes'
        source = memoryview(self.raw) if ascii_only else text  # slices of a view copy nothing
        parts: list = []
        pos = 0
        for start, stop, value in edits:
            parts += (source[pos:start], value.encode() if ascii_only else value)
            pos = stop
        parts.append(source[pos:])
        return b"".join(parts) if ascii_only else "".join(parts).encode()


def _members(text: str) -> tuple[dict[str, tuple[Any, int, int]], int]:
    """The routed top-level members of a JSON object (``model``, ``stream``,
    ``stream_options``), key -> (value, start, end), and the index of its closing brace; every
    other value is checked by the C scanner and dropped. Whitespace is stepped over by hand
    when it is one space (``json.dumps``'s separators), by a regex when there is more."""
    ws, blank, wanted = _ws, _BLANK, _ROUTED
    i = 0
    c = text[0]
    if c in blank:
        i = ws(text, i).end()
        c = text[i]
    if c != "{":
        raise BodyProblem("We could not parse the JSON body of your request: expected a JSON object.")
    members: dict[str, tuple[Any, int, int]] = {}
    i += 1
    c = text[i]
    if c in blank:
        i = ws(text, i).end()
        c = text[i]
    if c != "}":
        while True:
            if c != '"':
                raise ValueError("expected a member name")
            key, i = scanstring(text, i + 1)
            c = text[i]
            if c in blank:
                i = ws(text, i).end()
                c = text[i]
            if c != ":":
                raise ValueError("expected ':'")
            i += 1
            if text[i] == " ":
                i += 1
            if text[i] in blank:
                i = ws(text, i).end()
            try:
                value, end = _scan_once(text, i)
            except StopIteration:
                raise ValueError("expected a value") from None
            if key in wanted:
                members[key] = (value, i, end)  # a repeated key: the last wins, as json.loads does
            i = end
            c = text[i]
            if c in blank:
                i = ws(text, i).end()
                c = text[i]
            if c == ",":
                i += 1
                c = text[i]
                if c == " ":
                    i += 1
                    c = text[i]
                if c in blank:
                    i = ws(text, i).end()
                    c = text[i]
                continue
            if c != "}":
                raise ValueError("expected ',' or '}'")
            break
    if i + 1 != len(text) and ws(text, i + 1).end() != len(text):
        raise ValueError("extra data after the object")
    return members, i


def _type_name(value: object) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)  # fmt: skip


def read_body(body: bytes, streams: bool = True) -> LlmBody:
    """Scan an OpenAI request body (`streams`: the route may stream; embeddings do not)."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise BodyProblem("We could not parse the JSON body of your request: it is not UTF-8.") from None
    try:
        members, end = _members(text)
    except BodyProblem:
        raise
    except IndexError:
        raise BodyProblem("We could not parse the JSON body of your request: it ends too soon.") from None
    except ValueError as exc:
        raise BodyProblem(
            f"We could not parse the JSON body of your request: {exc}. (HINT: the body must be JSON; "
            "the OpenAI SDKs send it for you.)"
        ) from None
    found = members.get("model")
    if found is None:
        raise BodyProblem("you must provide a model parameter", "model", "missing_required_parameter")
    model, m_start, m_stop = found
    if not isinstance(model, str) or not model:
        raise BodyProblem(
            f"'model' must be a non-empty string naming a meshgate model, got {_type_name(model)}",
            "model",
            "invalid_type",
        )
    name, _, pinned = model.partition("/")
    stream = False
    include_usage = False
    options = options_span = None
    if streams:
        given = members.get("stream")
        if given is not None and given[0] is not None:
            if not isinstance(given[0], bool):
                raise BodyProblem(
                    f"'stream' must be a boolean, got {_type_name(given[0])}", "stream", "invalid_type"
                )
            stream = given[0]
        got = members.get("stream_options")
        if got is not None and got[0] is not None:
            options, o_start, o_stop = got
            if not isinstance(options, dict):
                raise BodyProblem(
                    f"'stream_options' must be an object, got {_type_name(options)}",
                    "stream_options",
                    "invalid_type",
                )
            usage = options.get("include_usage", False)
            if not isinstance(usage, bool) and usage is not None:
                raise BodyProblem(
                    f"'stream_options.include_usage' must be a boolean, got {_type_name(usage)}",
                    "stream_options.include_usage",
                    "invalid_type",
                )
            include_usage = bool(usage)
            options_span = (o_start, o_stop)
    return LlmBody(
        body, text, name, pinned or None, stream, include_usage, (m_start, m_stop), options, options_span, end
    )
