"""OpenFeature Remote Evaluation Protocol (OFREP): request parsing and response bodies, pure.

Applications evaluate meshgate's flags with OpenFeature's own OFREP provider; the data plane
answers ``POST /ofrep/v1/evaluate/flags/{key}`` with ``OfrepService.evaluate`` and
``POST /ofrep/v1/evaluate/flags`` with ``OfrepService.evaluate_bulk``. Both return
``(status, body, headers)`` ready for ``Responder.respond``. Shapes follow the spec's
``service/openapi.yaml`` and what ``openfeature-provider-ofrep`` parses:

- 200 ``{"key", "value", "reason", "variant", "metadata"}``; ``DISABLED`` is a success that
  answers the default variant (the provider needs ``reason`` and ``variant`` on every success);
- 400 ``{"key", "errorCode", "errorDetails"}`` for an evaluation that failed
  (``TARGETING_KEY_MISSING``: a rollout needs ``context.targetingKey``) or a bad request
  (``PARSE_ERROR`` for a body that is not JSON, ``INVALID_CONTEXT`` for a wrong shape);
- 404 ``{"key", "errorCode": "FLAG_NOT_FOUND", "errorDetails"}``;
- bulk: 200 ``{"flags": [...]}`` of the items above in key order, with an ``ETag``; the
  request's ``If-None-Match`` gets 304 with no body when nothing changed. The ETag covers
  the config version *and* the context, since the evaluations depend on both: a client that
  changes its context with an old ETag gets fresh values, never a wrong 304. Bulk failures
  are 400 ``{"errorCode", "errorDetails"}``.

Every success and error body a flag can produce is serialised once, at construction: a
request costs a JSON parse of its context, the flag evaluation and a dict lookup.

The context's ``targetingKey`` is the rollout key; every other context field is an
attribute for the rules, with any JSON value (see ``router.flags`` for how non-strings match).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

from router.flags import CompiledFlag, ErrorCode, Evaluation, evaluate

__all__ = ["Context", "OfrepError", "OfrepService", "Response", "parse_context"]

Headers = list[tuple[bytes, bytes]]
Response = tuple[int, bytes, Headers]

_CONTENT_TYPE = (b"content-type", b"application/json")


class OfrepError(ValueError):
    """A bad OFREP request: an OpenFeature error code and the words that explain it."""

    def __init__(self, error_code: ErrorCode, details: str) -> None:
        super().__init__(details)
        self.error_code = error_code
        self.details = details


@dataclass(frozen=True, slots=True)
class Context:
    targeting_key: str | None
    attributes: Mapping[str, Any]


_EMPTY = Context(None, {})


def parse_context(body: bytes) -> Context:
    """The evaluation context of a request body ``{"context": {"targetingKey": ..., ...}}``.

    An empty body or a missing/null ``context`` is an empty context (the spec makes both
    optional); other top-level fields are ignored for forward compatibility.
    """
    if not body.strip():
        return _EMPTY
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise OfrepError(ErrorCode.PARSE_ERROR, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise OfrepError(ErrorCode.INVALID_CONTEXT,
                         'the request body must be a JSON object like {"context": {"targetingKey": "..."}}')
    context = document.get("context")
    if context is None:
        return _EMPTY
    if not isinstance(context, dict):
        raise OfrepError(ErrorCode.INVALID_CONTEXT, f"context must be a JSON object, got {_kind(context)}")
    key = context.pop("targetingKey", None)
    if key is not None and not isinstance(key, str):
        raise OfrepError(ErrorCode.INVALID_CONTEXT,
                         f"context.targetingKey must be a string, got {_kind(key)}")
    return Context(key or None, context)


def _kind(value: object) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _dumps(document: Mapping[str, Any]) -> bytes:
    # ASCII escapes keep any string (even a lone surrogate from a URL or JSON) valid UTF-8.
    return json.dumps(document, separators=(",", ":")).encode()


def _failure(key: str | None, error_code: str, details: str) -> bytes:
    document: dict[str, Any] = {} if key is None else {"key": key}
    document.update(errorCode=str(error_code), errorDetails=details)
    return _dumps(document)


def _outcome_body(flag: CompiledFlag, evaluation: Evaluation) -> bytes:
    if evaluation.error_code is not None:
        return _failure(flag.key, evaluation.error_code, evaluation.error_message or "")
    return _dumps({
        "key": flag.key,
        "value": evaluation.value,
        "reason": str(evaluation.reason),
        "variant": evaluation.variant,
        "metadata": {} if flag.model is None else {"model": flag.model},
    })


def _etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 weak comparison of ``etag`` against an ``If-None-Match`` list (or ``*``)."""
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


class OfrepService:
    """OFREP answers for one snapshot of the flags; rebuilt when the config version changes."""

    __slots__ = ("_bodies", "_flags", "_order", "_version")

    def __init__(self, flags: Mapping[str, CompiledFlag], config_version: int | str) -> None:
        self._flags = dict(flags)
        self._order = tuple(sorted(self._flags))
        self._version = str(config_version).encode()
        # id() of each prebuilt Evaluation -> its body; the flags keep the evaluations alive.
        self._bodies = {
            id(outcome): _outcome_body(flag, outcome)
            for flag in self._flags.values()
            for outcome in flag.outcomes()
        }

    def evaluate(self, key: str, body: bytes) -> Response:
        """``POST /ofrep/v1/evaluate/flags/{key}``."""
        flag = self._flags.get(key)
        if flag is None:
            details = f"flag {key!r} is not defined"
            return 404, _failure(key, ErrorCode.FLAG_NOT_FOUND, details), [_CONTENT_TYPE]
        try:
            context = parse_context(body)
        except OfrepError as exc:
            return 400, _failure(key, exc.error_code, exc.details), [_CONTENT_TYPE]
        evaluation = evaluate(flag, context.targeting_key, context.attributes)
        status = 200 if evaluation.error_code is None else 400
        return status, self._bodies[id(evaluation)], [_CONTENT_TYPE]

    def evaluate_bulk(self, body: bytes, if_none_match: str | None = None) -> Response:
        """``POST /ofrep/v1/evaluate/flags``: every flag, 304 when ``If-None-Match`` still holds."""
        try:
            context = parse_context(body)
        except OfrepError as exc:
            return 400, _failure(None, exc.error_code, exc.details), [_CONTENT_TYPE]
        etag = self._etag(context)
        headers = [(b"etag", etag.encode())]
        if if_none_match is not None and _etag_matches(if_none_match, etag):
            return 304, b"", headers
        items = [
            self._bodies[id(evaluate(self._flags[key], context.targeting_key, context.attributes))]
            for key in self._order
        ]
        headers.append(_CONTENT_TYPE)
        return 200, b'{"flags":[' + b",".join(items) + b"]}", headers

    def _etag(self, context: Context) -> str:
        digest = blake2b(self._version, digest_size=12)
        digest.update(b"\0" + (context.targeting_key or "").encode("utf-8", "surrogatepass") + b"\0")
        digest.update(json.dumps(context.attributes, sort_keys=True, separators=(",", ":")).encode())
        return f'"{digest.hexdigest()}"'
