"""tinylm's server: one version of the model over the OpenAI HTTP API, the reference
upstream for meshgate's LLM routes (`meshgate serve-model tinylm --version v1`).

Routes: `POST /v1/chat/completions`, `POST /v1/completions` (streaming or not, `usage`),
`POST /v1/embeddings`, `GET /v1/models`, `GET /v1/models/tinylm`, `GET /health` (as vLLM),
`GET /v2/health/live|ready` (as the OIP server, for the shared process helpers). Debug routes: `GET|POST
/v2/debug/faults` (`models.llm.faults`), `GET /v2/debug/stats` (requests and what became of
each stream, so gateway tests can prove an upstream call was cancelled) and `GET
/v2/debug/requests` (what the last requests carried: headers and the `model` asked for).

A stream is generated while it is written: one event per sampled token, `time_per_token_ms`
apart, waiting while the client does not read, and stopped when it disconnects. With `api_key`
set, `/v1/*` needs `Authorization: Bearer <key>` (as vLLM's `--api-key`).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import math
import os
import time
from collections import deque
from typing import Any

from models.http1 import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    Handler,
    HttpApp,
    HttpServer,
    Reply,
    Response,
    Stream,
    StreamWriter,
    constant,
    json_reply,
    listen,
    run_blocking,
    serve_forever,
)
from models.llm._embed import DIMENSIONS
from models.llm._generate import Generation, rng_for
from models.llm._zoo import MODEL_ID, TinyLM, embedder, load_tinylm
from models.llm.api import (
    MAX_MODEL_LEN,
    ApiError,
    CompletionRequest,
    EmbeddingRequest,
    Kind,
    chat_logprobs,
    error_doc,
    parse_embedding_request,
    parse_request,
    stream_chunk,
    text_logprobs,
)
from models.llm.faults import LlmFate, LlmFaultInjector, LlmFaults

__all__ = ["LlmServer", "run_llm_server", "serve_llm", "start_llm_server"]

log = logging.getLogger("meshgate.tinylm")

DEBUG_RING_SIZE = 256
_JSON = b"content-type: application/json\r\n"
_SSE = b"content-type: text/event-stream\r\ncache-control: no-cache\r\n"
_DONE = b"data: [DONE]\n\n"
_MARK = "\u0000piece\u0000"  # never in generated text
_MARK_JSON = json.dumps(_MARK).encode()
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "requests",
}
_STATS = (
    "requests",
    "rate_limited",
    "errors_injected",
    "dropped",
    "streams_started",
    "streams_completed",
    "streams_cancelled",
    "streams_dropped",
    "prompt_tokens",
    "completion_tokens",
)


def _compact(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _event(doc: Any) -> bytes:
    return b"data: " + _compact(doc) + b"\n\n"


class _LlmApp(HttpApp):
    """Routing, generation and counters for one tinylm version."""

    __slots__ = ("_api_key", "_faults", "_fingerprint", "_model", "_recent", "created", "stats")

    def __init__(
        self, model: TinyLM, faults: LlmFaults, api_key: str | None, max_body: int, debug: bool
    ) -> None:
        super().__init__(max_body)
        self._model = model
        self._faults = LlmFaultInjector(faults)
        self._api_key = None if api_key is None else f"Bearer {api_key}".encode()
        self._fingerprint = f"{MODEL_ID}-{model.version}"
        self._recent: deque[dict[str, Any]] = deque(maxlen=DEBUG_RING_SIZE)
        self.created = int(time.time())
        self.stats = dict.fromkeys(_STATS, 0)
        card = self._card()
        routes: dict[bytes, dict[bytes, Handler]] = {
            b"/v1/chat/completions": {b"POST": self._chat},
            b"/v1/completions": {b"POST": self._text},
            b"/v1/embeddings": {b"POST": self._embeddings},
            b"/v1/models": {
                b"GET": self._authorized(constant(json_reply(200, {"object": "list", "data": [card]})))
            },
            f"/v1/models/{MODEL_ID}".encode(): {b"GET": self._authorized(constant(json_reply(200, card)))},
            b"/health": {b"GET": constant(json_reply(200, {}))},
            b"/v2/health/live": {b"GET": constant(json_reply(200, {"live": True}))},
            b"/v2/health/ready": {b"GET": constant(json_reply(200, {"ready": True}))},
        }
        if debug:
            routes[b"/v2/debug/faults"] = {b"GET": self._get_faults, b"POST": self._set_faults}
            routes[b"/v2/debug/stats"] = {b"GET": self._stats}
            routes[b"/v2/debug/requests"] = {b"GET": self._debug_requests}
        self.routes = routes

    def _card(self) -> dict[str, Any]:
        return {
            "id": MODEL_ID,
            "object": "model",
            "created": self.created,
            "owned_by": "meshgate",
            "root": MODEL_ID,
            "parent": None,
            "max_model_len": MAX_MODEL_LEN,
            "version": self._model.version,
            "description": self._model.description,
        }

    # -- errors ------------------------------------------------------------------------

    def error_body(self, status: int, message: str) -> bytes:
        return error_doc(message, _ERROR_TYPES.get(status, "server_error"))

    def not_found(self, path: bytes) -> Reply:
        text = path.decode("latin-1")
        if text.startswith("/v1/models/"):
            return self._unknown_model(text.removeprefix("/v1/models/"))
        return 404, error_doc(f"no such path {text}", "invalid_request_error"), 0.0

    def _unknown_model(self, name: str) -> Reply:
        message = (
            f"The model `{name}` does not exist. This server serves `{MODEL_ID}` ({self._model.version})."
        )
        return 404, error_doc(message, "invalid_request_error", "model", "model_not_found"), 0.0

    def _authorized(self, handler: Handler) -> Handler:
        def guarded(body: bytes, headers: dict[bytes, bytes]) -> Reply | Response | Stream:
            refusal = self._refusal(headers)
            return refusal if refusal is not None else handler(body, headers)

        return guarded

    def _refusal(self, headers: dict[bytes, bytes]) -> Reply | None:
        key = self._api_key
        if key is None or hmac.compare_digest(headers.get(b"authorization", b""), key):
            return None
        doc = error_doc("Incorrect API key provided.", "invalid_request_error", None, "invalid_api_key")
        return 401, doc, 0.0

    # -- completions -------------------------------------------------------------------

    def _chat(self, body: bytes, headers: dict[bytes, bytes]) -> Reply | Response | Stream:
        return self._complete("chat", body, headers)

    def _text(self, body: bytes, headers: dict[bytes, bytes]) -> Reply | Response | Stream:
        return self._complete("text", body, headers)

    def _complete(self, kind: Kind, body: bytes, headers: dict[bytes, bytes]) -> Reply | Response | Stream:
        refusal = self._refusal(headers)
        if refusal is not None:
            self._remember(kind, None, None, headers)
            return refusal
        try:
            request = parse_request(kind, body, self._model.lm.vocab.words)
        except ApiError as exc:
            self._remember(kind, None, None, headers)
            return exc.status, exc.body(), 0.0
        self._remember(kind, request.model, request.stream, headers)
        refused, fate = self._admit(request.model)
        if refused is not None:
            return refused
        faults = self._faults.faults
        self.stats["prompt_tokens"] += request.prompt_tokens
        if request.stream:
            drop_after = faults.drop_after if fate is LlmFate.DROP else None
            return Stream(lambda writer: self._stream(writer, request, faults, drop_after), _SSE)
        return self._whole(request, faults, fate is LlmFate.DROP)

    def _admit(self, model: str) -> tuple[Reply | Response | None, LlmFate]:
        """The model check and the injected faults every generating request goes through:
        the answer that refuses it (or None) and its fate (PASS or DROP when admitted)."""
        if model != MODEL_ID:
            return self._unknown_model(model), LlmFate.PASS
        stats = self.stats
        stats["requests"] += 1
        faults = self._faults.faults
        fate = self._faults.draw()
        if fate is LlmFate.RATE_LIMITED:
            stats["rate_limited"] += 1
            wait = math.ceil(faults.retry_after_s)
            doc = error_doc(
                f"Rate limit reached for {MODEL_ID} (injected): retry after {wait} s.",
                "requests",
                None,
                "rate_limit_exceeded",
            )
            return Response(429, doc, _JSON + b"retry-after: %d\r\n" % wait), fate
        if fate is LlmFate.ERROR:
            stats["errors_injected"] += 1
            return (faults.error_status, error_doc("injected fault", "server_error"), 0.0), fate
        return None, fate

    def _embeddings(self, body: bytes, headers: dict[bytes, bytes]) -> Reply | Response | Stream:
        refusal = self._refusal(headers)
        if refusal is not None:
            self._remember("embeddings", None, None, headers)
            return refusal
        try:
            request = parse_embedding_request(body, self._model.lm.vocab.words, DIMENSIONS)
        except ApiError as exc:
            self._remember("embeddings", None, None, headers)
            return exc.status, exc.body(), 0.0
        self._remember("embeddings", request.model, False, headers)
        refused, fate = self._admit(request.model)
        if refused is not None:
            return refused
        delay = self._faults.faults.time_to_first_token_ms / 1000.0
        if fate is LlmFate.DROP:
            self.stats["dropped"] += 1
            return Stream(lambda writer: _cut_after(writer, delay), _JSON)
        self.stats["prompt_tokens"] += request.prompt_tokens
        return 200, _compact(_embedding_doc(request)), delay

    def _generations(self, request: CompletionRequest) -> list[Generation]:
        lm = self._model.lm
        out = []
        for prompt in request.prompts:
            context = lm.vocab.encode(prompt.tokens)
            previous = prompt.tokens[-1] if request.kind == "text" and prompt.tokens else None
            for _ in range(request.n):
                rng = rng_for(request.sampling.seed, len(out))
                out.append(Generation(lm, context, previous, request.sampling, rng))
        return out

    def _prefix(self, request: CompletionRequest, index: int) -> str:
        """What a choice starts with: the prompt, for completions with `echo`."""
        return request.prompts[index // request.n].text if request.echo else ""

    def _whole(self, request: CompletionRequest, faults: LlmFaults, drop: bool) -> Reply | Stream:
        generations = self._generations(request)
        choices = []
        for index, g in enumerate(generations):
            parts = [self._prefix(request, index)]
            while g.finish_reason is None:
                parts.append(g.step())
            text = "".join(parts)
            logprobs = None
            if request.kind == "chat":
                choice = {"index": index, "message": {"role": "assistant", "content": text}}
                if request.sampling.logprobs is not None:
                    logprobs = chat_logprobs(g.take_logprobs())
            else:
                choice = {"text": text, "index": index}
                if request.sampling.logprobs is not None:
                    logprobs = text_logprobs(g.take_logprobs(), len(parts[0]))
            choice["logprobs"] = logprobs
            choice["finish_reason"] = g.finish_reason
            choices.append(choice)
        completion = sum(g.tokens for g in generations)
        delay = (faults.time_to_first_token_ms + faults.time_per_token_ms * max(completion - 1, 0)) / 1000.0
        if drop:
            self.stats["dropped"] += 1
            return Stream(lambda writer: _cut_after(writer, delay), _JSON)
        self.stats["completion_tokens"] += completion
        doc = {
            "id": _new_id(request),
            "object": "chat.completion" if request.kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": MODEL_ID,
            "system_fingerprint": self._fingerprint,
            "choices": choices,
            "usage": _usage(request.prompt_tokens, completion),
        }
        return 200, _compact(doc), delay

    async def _stream(
        self, writer: StreamWriter, request: CompletionRequest, faults: LlmFaults, drop_after: int | None
    ) -> None:
        stats = self.stats
        stats["streams_started"] += 1
        ident, created, chat = _new_id(request), int(time.time()), request.kind == "chat"
        fingerprint, with_usage = self._fingerprint, request.include_usage
        sent = 0
        completion = 0

        async def send(event: bytes) -> None:
            nonlocal sent
            if sent == drop_after:
                stats["streams_dropped"] += 1
                writer.abort()
                raise ConnectionAbortedError("injected mid-stream drop")
            await writer.write(event)
            sent += 1

        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(
            index: int, content: str | None, finish: str | None, role: bool = False, logprobs: Any = None
        ) -> bytes:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
                if content is not None:
                    delta["content"] = content
                choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            else:
                choice = {
                    "text": content or "",
                    "index": index,
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }
            return _event(stream_chunk(obj, ident, created, MODEL_ID, fingerprint, [choice], with_usage))

        offsets: dict[int, int] = {}  # completions: where the next token starts in the choice's text

        def logprobs_of(index: int, g: Generation) -> Any:
            entries = g.take_logprobs()
            if not entries:
                return None
            if chat:
                return chat_logprobs(entries)
            start = offsets.get(index, len(self._prefix(request, index)))
            offsets[index] = start + sum(len(e.token) for e in entries)
            return text_logprobs(entries, start)

        # A token's event is `chunk(index, piece, None)` with only the piece varying: encode
        # the rest once per choice and splice the piece's JSON string in.
        templates: dict[int, tuple[bytes, bytes]] = {}

        def token_event(index: int, piece: str) -> bytes:
            template = templates.get(index)
            if template is None:
                head, _, tail = chunk(index, _MARK, None).partition(_MARK_JSON)
                template = templates[index] = (head, tail)
            return template[0] + json.dumps(piece).encode() + template[1]

        try:
            if faults.time_to_first_token_ms:
                await asyncio.sleep(faults.time_to_first_token_ms / 1000.0)
            generations = self._generations(request)
            for index in range(len(generations)):
                if chat:
                    await send(chunk(index, None, None, role=True))
                elif request.echo:
                    await send(chunk(index, self._prefix(request, index), None))
            active = list(enumerate(generations))
            wants_logprobs = request.sampling.logprobs is not None
            tick = faults.time_per_token_ms / 1000.0
            while active:
                still = []
                for index, g in active:
                    before = g.tokens
                    piece = g.step()
                    completion += g.tokens - before
                    if piece:
                        if wants_logprobs:
                            await send(chunk(index, piece, None, logprobs=logprobs_of(index, g)))
                        else:
                            await send(token_event(index, piece))
                    if g.finish_reason is None:
                        still.append((index, g))
                    else:
                        rest = logprobs_of(index, g) if wants_logprobs else None
                        await send(chunk(index, None if chat else "", g.finish_reason, logprobs=rest))
                active = still
                if active:
                    await asyncio.sleep(tick)  # also lets the loop see a client that left
            if with_usage:
                last = stream_chunk(obj, ident, created, MODEL_ID, fingerprint, [], False)
                last["usage"] = _usage(request.prompt_tokens, completion)
                await send(_event(last))
            await send(_DONE)
        except ConnectionAbortedError:
            raise
        except (asyncio.CancelledError, ConnectionError):
            stats["streams_cancelled"] += 1
            raise
        finally:
            stats["completion_tokens"] += completion
        stats["streams_completed"] += 1

    # -- debug -------------------------------------------------------------------------

    def _remember(
        self, kind: str, model: str | None, stream: bool | None, headers: dict[bytes, bytes]
    ) -> None:
        """Keep what a generating request carried (`GET /v2/debug/requests`); `model` and
        `stream` are None when it was refused before they were read."""

        def header(name: bytes) -> str | None:
            value = headers.get(name)
            return None if value is None else value.decode("latin-1")

        self._recent.append(
            {
                "kind": kind,
                "model": model,
                "stream": stream,
                "authorization": header(b"authorization"),
                "x-request-id": header(b"x-request-id"),
                "traceparent": header(b"traceparent"),
            }
        )

    def _debug_requests(self, body: bytes, headers: dict[bytes, bytes]) -> Reply:
        return json_reply(200, {"requests": list(self._recent)})

    def _stats(self, body: bytes, headers: dict[bytes, bytes]) -> Reply:
        stats = self.stats
        active = stats["streams_started"] - stats["streams_completed"]
        active -= stats["streams_cancelled"] + stats["streams_dropped"]
        doc = {
            **stats,
            "streams_active": active,
            "connections_open": len(self.connections),
            "connections_total": self.connections_total,
            "requests_total": self.requests_total,
        }
        return json_reply(200, doc)

    def _get_faults(self, body: bytes, headers: dict[bytes, bytes]) -> Reply:
        return json_reply(200, {"faults": self._faults.faults.to_json()})

    def _set_faults(self, body: bytes, headers: dict[bytes, bytes]) -> Reply:
        """Replace all knobs (missing fields take their defaults, so `{}` heals the server)."""
        try:
            faults = LlmFaults.from_json(json.loads(body))
        except (ValueError, TypeError) as exc:
            return 400, error_doc(f"faults: {exc}", "invalid_request_error"), 0.0
        self._faults.replace(faults)
        return json_reply(200, {"faults": faults.to_json()})


def _embedding_doc(request: EmbeddingRequest) -> dict[str, Any]:
    model = embedder()
    dimensions = request.dimensions or DIMENSIONS
    data = []
    for index, item in enumerate(request.inputs):
        vector = model.embed(item.tokens, dimensions)
        encoded: Any = (
            base64.b64encode(vector.astype("<f4").tobytes()).decode() if request.base64 else vector.tolist()
        )
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = request.prompt_tokens
    return {
        "object": "list",
        "data": data,
        "model": MODEL_ID,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _new_id(request: CompletionRequest) -> str:
    return ("chatcmpl-" if request.kind == "chat" else "cmpl-") + os.urandom(12).hex()


async def _cut_after(writer: StreamWriter, delay: float) -> None:
    """A whole answer that never comes: the connection closes after `delay`, no byte sent."""
    if delay:
        await asyncio.sleep(delay)
    writer.abort()
    raise ConnectionAbortedError("injected drop")


class LlmServer(HttpServer):
    """A listening tinylm server (its counters: `GET /v2/debug/stats`). Made by `start_llm_server`."""

    __slots__ = ("version",)

    def __init__(self, server: asyncio.Server, app: _LlmApp, version: str, idle_timeout_s: float) -> None:
        super().__init__(server, app, idle_timeout_s)
        self.version = version


async def start_llm_server(
    version: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: LlmFaults = LlmFaults(),  # noqa: B008 - frozen, so a shared default is safe
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    debug_endpoints: bool = True,
) -> LlmServer:
    """Train (once per process) `version`, listen on host:port (0 = a free one), return at once.

    Raises `models.zoo.UnknownModelError` for a version tinylm does not have.
    """
    app = _LlmApp(load_tinylm(version), faults, api_key, max_body_bytes, debug_endpoints)
    return LlmServer(await listen(app, host, port), app, version, idle_timeout_s)


async def serve_llm(version: str, *, ready_event: Any = None, **options: Any) -> None:
    """Serve until cancelled; print `serving tinylm <version> on <url>` once listening."""
    server = await start_llm_server(version, **options)
    await serve_forever(server, f"serving {MODEL_ID} {version}", ready_event)


def run_llm_server(version: str, **options: Any) -> None:
    """Blocking entry point for `meshgate serve-model tinylm`; stops on SIGINT/SIGTERM.

    Trains before listening, so a bad version fails before any port is taken.
    """
    load_tinylm(version)
    run_blocking(lambda: serve_llm(version, **options))
