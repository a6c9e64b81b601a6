"""One request on an OpenAI-compatible route: the OIP ``Exchange`` with an LLM front end.

The attempt sequence, its decisions and their execution (send, retry, fall back, queue,
answer) are ``Exchange``'s, unchanged; this subclass changes only what differs for an LLM:

- per version, the body names the version's upstream model and the request carries its
  provider key (``Authorization: Bearer ...``; the client's key never goes upstream), and the
  upstream path follows the endpoint's base URL (``https://api.example.com/v1`` + ``/chat/
  completions``);
- a whole answer is passed through as it is, with its ``usage`` read for ``ex.llm``;
- a ``text/event-stream`` answer is relayed event by event (`SseRelay`), with backpressure
  both ways: the head waits for the first whole event, so until then a failure, a slow first
  token (``timeouts.first_token_ms``) or a stream that breaks may still be retried or fall
  back; `Attempts.commit()` comes with the first byte the client gets. After that, a stream
  that breaks, goes silent (``stream_idle_ms``) or runs too long (``stream_ms``) ends with an
  SSE error event in OpenAI's shape and its own reason code (``ex.llm.broken``);
- the usage chunk the gateway asked for (``stream_options.include_usage``) is kept from a
  client that did not ask for it;
- the gateway's own errors are OpenAI error documents.

The observers run once the answer is over (for a stream: at its end), with ``ex.llm`` filled.
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway.clientkeys.gate import openai_error
from gateway.dataplane.exchange import Exchange, error_outcome
from gateway.dataplane.headers import response_headers
from gateway.dataplane.llm_usage import LlmUsage, charged_tokens, cost_usd
from gateway.dataplane.shadow import LlmShadowCopy
from gateway.dataplane.sse import DONE_EVENT, SseEvents, error_event, is_usage_chunk, response_model, usage_of
from gateway.http import BodyStream, UpstreamError, UpstreamResponse, upstream_error
from router import reasons
from router.attempt import Answer
from router.retry import Outcome

if TYPE_CHECKING:
    from gateway.dataplane.openai_body import LlmBody
    from gateway.dataplane.plane import DataPlane, VersionState
    from gateway.http import Handle, Request, Responder
    from router.deadline import Deadline
    from router.table import Choice, LlmRoute, ModelRoute, VersionRoute

__all__ = ["LlmExchange", "error_type"]

Headers = list[tuple[bytes, bytes]]

_AUTH = b"authorization"
_NO_AUTH = (b"host", b"")  # the pool writes host itself: this slot sends nothing
_RATE_HEADER = b"x-ratelimit-"
_USAGE = b'"usage"'
_KINDS = {b"/v1/chat/completions": "chat", b"/v1/completions": "text", b"/v1/embeddings": "embeddings"}
_prefixes: dict[str, bytes] = {}


def upstream_target(url: str, path: bytes) -> bytes:
    """``/v1/...`` under an endpoint's base path (which may itself end in ``/v1``)."""
    prefix = _prefixes.get(url)
    if prefix is None:
        base = urlsplit(url).path.rstrip("/")
        prefix = _prefixes[url] = base.removesuffix("/v1").encode()
    return prefix + path


def error_type(status: int) -> str:
    """OpenAI's error ``type`` for a status."""
    if status == 429:
        return "requests"
    return "invalid_request_error" if status < 500 else "server_error"


class LlmExchange(Exchange):
    __slots__ = (
        "_asked",
        "_call",
        "_gate_headers",
        "_key_id",
        "_keys",
        "_llm_body",
        "_path",
        "_prepared",
        "_relay",
        "_sent_at",
        "_ttft_bound",
    )

    def __init__(
        self,
        plane: DataPlane,
        request: Request,
        responder: Responder,
        model: ModelRoute,
        choice: Choice,
        headers: Headers,
        deadline: Deadline,
        request_id: str,
        state: VersionState,
        body: LlmBody,
        path: bytes,
        admission: tuple[str | None, Headers],
        keys: object,
    ) -> None:
        headers.insert(0, _NO_AUTH)  # the version's provider key goes here (set per version)
        super().__init__(plane, request, responder, model, choice, path, headers, deadline, request_id, state)
        self._llm_body = body
        self._asked = body.model if body.pinned is None else f"{body.model}/{body.pinned}"
        self._path = path
        self._key_id, self._gate_headers = admission
        self._keys = keys  # gateway.dataplane.openai_routes.ProviderKeys
        self._prepared: VersionState | None = None
        self._call: Handle | None = None
        self._relay: SseRelay | None = None
        self._sent_at = 0.0
        self._ttft_bound = False
        self.llm = LlmUsage(streamed=body.stream)

    # -- per version ------------------------------------------------------------------
    def _auth(self, llm: LlmRoute) -> tuple[bytes, bytes] | None:
        """The upstream's ``Authorization`` slot for a version (None: its key cannot be read)."""
        if llm.api_key is None:
            return _NO_AUTH
        key = self._keys.resolve(llm.api_key)  # type: ignore[attr-defined]
        return (_AUTH, b"Bearer " + key.encode()) if key is not None else None

    def _prepare(self) -> str | None:
        """Body and provider key for the version being served; a problem, if the key is missing."""
        state = self._state
        llm = state.route.llm
        auth = self._auth(llm)  # type: ignore[arg-type]
        if auth is None:
            return llm.api_key  # type: ignore[union-attr]
        self.headers[0] = auth
        self._body = self._llm_body.for_upstream(llm.upstream_model, self._asked)  # type: ignore[union-attr]
        self._prepared = state
        return None

    def start(self) -> None:
        if self._state.runtime.shadow is not None:  # no work at all for a version without one
            shadow = self.attempt.shadow()
            if shadow is not None:
                self.shadow = LlmShadowCopy.start(  # type: ignore[assignment]
                    self._plane, self.model, self.version, shadow, _KINDS[self._path],
                    self._mirror_request, partial(upstream_target, path=self._path), self.llm, self.t0,
                )  # fmt: skip
        super().start()

    def _mirror_request(self, vr: VersionRoute) -> tuple[Headers, bytes] | str:
        """The headers and body of a shadow copy to `vr` (its model name, its provider key),
        or the reference of a key that cannot be read."""
        llm = vr.llm
        auth = self._auth(llm)  # type: ignore[arg-type]
        if auth is None:
            return llm.api_key  # type: ignore[union-attr,return-value]
        return [auth, *self.headers[1:]], self._llm_body.for_upstream(llm.upstream_model, self._asked)  # type: ignore[union-attr]

    def _url(self) -> str:
        """The URL of the endpoint of the latest attempt."""
        return self._state.route.endpoints[self.attempt.ep]

    def _switch(self, version: str) -> None:
        self.version, self.fallback = version, True
        self._state = self._plane.version_state(self.model.name, version)
        self._endpoints = self._plane.upstreams.endpoints(self._state)

    def _send(self, d) -> None:  # type: ignore[no-untyped-def]
        if self._prepared is not self._state:
            missing = self._prepare()
            if missing is not None:
                m = self.attempt
                text = reasons.REASONS[reasons.PROVIDER_KEY_UNAVAILABLE].text(
                    model=self.model.name, version=m.version, ref=missing
                )
                self._run(m.failed(Outcome.CONNECT_FAILURE, reasons.PROVIDER_KEY_UNAVAILABLE, text))
                return
        endpoint = self._endpoints[d.ep]
        timeout = d.timeout_s
        self._ttft_bound = False
        if self.llm.streamed:  # type: ignore[union-attr]
            first = self._state.route.policy.timeouts.first_token_ms / 1000.0
            if first < timeout:
                timeout = first
                self._ttft_bound = True
                self.attempt.shortened()
        self._sent_at = self._plane.now()
        self._handle = self._call = endpoint.send(
            b"POST",
            upstream_target(endpoint.url, self._path),
            self.headers,
            self._body,
            timeout,
            self._on_result,
        )

    def _on_result(self, response: UpstreamResponse | None, error: UpstreamError | None) -> None:
        if error is not None and self._ttft_bound and error.reason == reasons.UPSTREAM_TIMEOUT:
            error = self._first_token_error()
        super()._on_result(response, error)

    def _first_token_error(self) -> UpstreamError:
        limit = self._state.route.policy.timeouts.first_token_ms
        url = self._url()
        return UpstreamError(
            reasons.FIRST_TOKEN_TIMEOUT,
            reasons.REASONS[reasons.FIRST_TOKEN_TIMEOUT].text(url=url, limit_ms=limit),
        )

    # -- answers ------------------------------------------------------------------------
    def _upstream_headers(self, response: UpstreamResponse) -> Headers:
        """The upstream's headers for the client; with client keys, the provider's own
        ``x-ratelimit-*`` give way to the key's."""
        if not self._gate_headers:
            return response.headers
        return [h for h in response.headers if not h[0].startswith(_RATE_HEADER)]

    def _deliver(self, reason: str | None) -> None:
        response = self._last
        stream = response.stream  # type: ignore[union-attr]
        if stream is not None and reason is None and response.status == 200:  # type: ignore[union-attr]
            self._handle = self._call  # a client that leaves cancels it (Exchange._client_gone)
            self._relay = SseRelay(self, response, stream)  # type: ignore[arg-type]
            return
        self.done = True
        if stream is not None:  # a large whole answer (or a failed stream): relayed as the engine does
            self._relay_whole(response, reason)  # type: ignore[arg-type]
            return
        body = response.body or b""  # type: ignore[union-attr]
        llm = self.llm
        if response.status == 200:  # type: ignore[union-attr]
            self._count(usage_of(body))
            llm.response_model = response_model(body)  # type: ignore[union-attr]
        responder = self._responder
        if not responder.disconnected:
            extra = self._gate_headers
            if reason is not None:
                extra = [*extra, (b"x-meshgate-error", reason.encode())]
            responder.respond(
                response.status,  # type: ignore[union-attr]
                self._upstream_headers(response),  # type: ignore[arg-type]
                body,
                extra,
                self.header_lines(),
            )
        self._over(response.status, reason, response)  # type: ignore[union-attr]

    def _relay_whole(self, response: UpstreamResponse, reason: str | None) -> None:
        from gateway.http import relay

        extra = self.answer_headers()
        if reason is not None:
            extra.append((b"x-meshgate-error", reason.encode()))
        self.attempt.commit()
        relay(response, self._responder, extra, self._relay_done)
        self._over(response.status, reason, response)

    def answer_headers(self) -> Headers:
        """The gateway's headers on a relayed answer: which version served it, the key's limits."""
        return response_headers(self) + self._gate_headers

    def _answer(self, d: Answer) -> None:
        """The gateway's own answer, as an OpenAI error document."""
        self.done = True
        status = reasons.STATUS[d.reason]
        after = d.retry_after_s
        if after is None and d.reason == reasons.OVERLOADED:
            after = 1.0
        extra = self.answer_headers()
        if after is not None:
            extra.append((b"retry-after", b"%d" % max(1, math.ceil(after))))
        self._plane.stats.errors += 1
        if not self._responder.disconnected:
            self._responder.respond(
                *openai_error(status, d.reason, d.message, error_type(status), d.reason, extra)
            )
        self._over(status, d.reason, None)

    def _count(self, usage: dict | None) -> None:
        """Tokens and cost from an upstream's ``usage`` object."""
        if usage is None:
            return
        llm = self.llm
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int):
            llm.prompt_tokens = prompt  # type: ignore[union-attr]
        if isinstance(completion, int):
            llm.completion_tokens = completion  # type: ignore[union-attr]

    def _over(self, status: int, reason: str | None, response: UpstreamResponse | None) -> None:
        """The request is over: price it, count its tokens against the key, run the observers."""
        llm = self.llm
        if llm.prompt_tokens is not None or llm.completion_tokens is not None:  # type: ignore[union-attr]
            llm.cost_usd = cost_usd(self._state.route.llm, llm.prompt_tokens, llm.completion_tokens)  # type: ignore[union-attr,arg-type]
        self._charge()
        self._plane.completed(self, status, reason, response)

    def _charge(self, left_in_flight: bool = False) -> None:
        """Count the request's tokens against its client key (an estimate without the upstream's
        usage: gateway.dataplane.llm_usage.charged_tokens)."""
        tokens = charged_tokens(self.llm, len(self._llm_body.text), left_in_flight)  # type: ignore[arg-type]
        self._plane.key_gate.record(self._key_id, tokens)

    def _client_gone(self) -> None:
        if not self.done:
            relay = self._relay
            if relay is not None:
                relay.stop()
                relay.measure(self._plane.now())
            # the prompt it sent counts though it left before the usage (whole answer or stream),
            # when the upstream has it (a call in flight, or the stream being relayed)
            self._charge(self._handle is not None)
        super()._client_gone()

    # -- the stream's end ----------------------------------------------------------------
    def stream_failed_early(self, error: UpstreamError) -> None:
        """Nothing reached the client yet: the attempt failed, and may be retried or fall back."""
        self._relay = None
        self._handle = None
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
        self._last = None
        m = self.attempt
        d = m.failed(error_outcome(error), error.reason, error.message)
        if self._plane.on_attempt:
            self._plane.attempted(self, m.ep, m.outcome, None, error, m.started_at, m.ended_at)
        self._run(d)

    def stream_over(self, reason: str | None, message: str) -> None:
        """The relayed stream ended: whole (`reason` None) or broken after its first event."""
        self.done = True
        self._handle = None
        m = self.attempt
        if reason is None:
            m.ended()
            if self.shadow is not None:
                self.shadow.primary_streamed()  # type: ignore[attr-defined]
        else:
            call, self._call = self._call, None
            if call is not None:
                call.cancel()  # stop the upstream (a silent or overlong stream is still open)
            self.llm.broken = True  # type: ignore[union-attr]
            outcome = Outcome.RESET if reason == reasons.STREAM_BROKEN else Outcome.TIMEOUT
            m.failed(outcome, reason, message)
        if self._plane.on_attempt:
            self._plane.attempted(self, m.ep, m.outcome, None, None, m.started_at, m.ended_at)
        self._over(200, reason, None)


def _plain(chunk: bytes) -> bool:
    """A chunk the relay forwards as read, after a few C searches: one whole single-line event
    (its only newlines the two that end it), not [DONE], with no usage object (`usage_of`'s
    test: the last "usage" has no "{" after it)."""
    return (
        chunk.find(b"\n") == len(chunk) - 2
        and chunk[-1] == 10
        and chunk != DONE_EVENT
        and ((at := chunk.rfind(_USAGE)) < 0 or chunk.find(b"{", at + 7, at + 11) < 0)
    )


class SseRelay:
    """An upstream's Server-Sent Events to the client, whole events only, as they come."""

    __slots__ = (
        "_events",
        "_ex",
        "_first_at",
        "_keep",
        "_last_at",
        "_live",
        "_raw",
        "_response",
        "_stream",
        "_strip_usage",
        "_timer",
    )

    def __init__(self, ex: LlmExchange, response: UpstreamResponse, stream: BodyStream) -> None:
        self._ex = ex
        self._response = response
        self._stream = stream
        self._events = SseEvents()
        self._live = True
        self._strip_usage = not ex._llm_body.include_usage
        shadow = ex.shadow
        self._keep = shadow.keep if shadow is not None else None  # type: ignore[attr-defined]  # the answer, for its comparison
        self._first_at: float | None = None
        self._last_at = 0.0
        self._raw = False  # the client's answer began, chunked: the upstream's chunks go as they came
        plane = ex._plane
        first = ex._state.route.policy.timeouts.first_token_ms / 1000.0
        wait = min(ex._sent_at + first, ex.deadline.expires_at) - plane.now()
        ex._timer = plane.call_later(max(0.0, wait), self._watch)
        stream.start(self._on_data, self._on_end, self._on_framed)

    def stop(self) -> None:
        """No more of this stream reaches the exchange (the client left, or it was abandoned)."""
        self._live = False

    def _on_data(self, chunk: bytes) -> None:
        if not self._live:
            return
        ex = self._ex
        splitter = self._events
        # The common chunk, forwarded as read after a few C searches: one plain event (`_plain`)
        # with no part of an event held back before it and no shadow keeping the events.
        # Anything else goes through the splitter.
        if not splitter.rest and _plain(chunk) and self._keep is None:
            self._forward(chunk, chunk, 1)
            return
        whole = not splitter.rest  # no part of an event held back from the previous chunk
        events = splitter.feed(chunk)
        if not events:
            return
        if self._keep is not None:
            self._keep(events)
        content = 0
        strip: bytes | None = None  # the usage chunk to keep from the client
        for event in events:
            if event == DONE_EVENT:
                continue
            usage = usage_of(event)
            if usage is None:
                content += 1
                continue
            ex._count(usage)
            if self._strip_usage and is_usage_chunk(event):
                strip = event
        if strip is not None:
            out = b"".join([event for event in events if event is not strip])
        elif whole and not splitter.rest:
            out = chunk  # the events are the chunk itself: no copy
        else:
            out = b"".join(events)
        self._forward(out, events[0], content)

    def _on_framed(self, data: bytes, chunks: list[bytes]) -> None:
        """What one read brought, whole chunks of the upstream's chunked body with their framing
        (`chunks`: their data). When each is one plain event (`_plain`), the client's answer is
        chunked and has begun, and no part of an event is held back, the read goes to the client
        as it came, in one write, without framing it again; else its data goes the way of any
        chunk. Events that came in one read are counted one by one, at the read's time (so the
        mean gap between events is between their arrivals at the gateway, 0 within one read)."""
        if self._raw and self._live and not self._events.rest:
            for chunk in chunks:  # `_plain`, inline (a call costs as much as its searches)
                if not (
                    chunk.find(b"\n") == len(chunk) - 2
                    and chunk[-1] == 10
                    and chunk != DONE_EVENT
                    and ((at := chunk.rfind(_USAGE)) < 0 or chunk.find(b"{", at + 7, at + 11) < 0)
                ):
                    break
            else:  # `_forward` for a begun answer, inline: once per read
                ex = self._ex
                llm = ex.llm
                llm.events += len(chunks)  # type: ignore[union-attr]
                self._last_at = ex._plane.now()
                if not ex._responder.write_chunked(data):
                    stream = self._stream
                    stream.pause()
                    ex._responder.on_writable(stream.resume)
                return
        self._on_data(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _forward(self, out: bytes, first: bytes, content: int) -> None:
        """Count `content` events (`first` the first of them) and send `out` to the client,
        pausing the upstream while it is slow."""
        ex = self._ex
        llm = ex.llm
        now = ex._plane.now()
        if content:
            if self._first_at is None:
                self._first_at = now
                llm.response_model = response_model(first)  # type: ignore[union-attr]
            llm.events += content  # type: ignore[union-attr]
            self._last_at = now
        responder = ex._responder
        if not responder.started:
            response = self._response
            responder.start(response.status, ex._upstream_headers(response), None, ex.answer_headers())
            ex.attempt.commit()
            if responder.disconnected:
                return
            self._raw = self._keep is None and responder.chunked
            self._rearm(now)
        if out and not responder.write(out):
            stream = self._stream
            stream.pause()
            responder.on_writable(stream.resume)

    def _on_end(self, error: Exception | None) -> None:
        if not self._live:
            return
        self._live = False
        ex = self._ex
        if ex._timer is not None:
            ex._timer.cancel()
            ex._timer = None
        responder = ex._responder
        if error is not None and not responder.started:
            ex.stream_failed_early(upstream_error(error))
            return
        if not responder.started:  # a stream with no event at all
            response = self._response
            responder.start(response.status, ex._upstream_headers(response), None, ex.answer_headers())
            ex.attempt.commit()
        self.measure(ex._plane.now())
        if error is None:
            responder.end()
            ex.stream_over(None, "")
            return
        failure = upstream_error(error)
        message = reasons.REASONS[reasons.STREAM_BROKEN].text(detail=failure.message)
        self._break(reasons.STREAM_BROKEN, message)

    def _break(self, reason: str, message: str) -> None:
        """End a committed stream with OpenAI's error event, then end the response cleanly."""
        ex = self._ex
        responder = ex._responder
        if not responder.done:
            responder.write(error_event(message, reason))
            responder.end()
        ex.stream_over(reason, message)

    def _watch(self) -> None:
        """The stream's one timer: the first token, then silence and the whole stream's length."""
        ex = self._ex
        ex._timer = None
        if not self._live:
            return
        now = ex._plane.now()
        timeouts = ex._state.route.policy.timeouts
        if not ex._responder.started:  # no whole event yet: abandon this attempt
            self._live = False
            ex.stream_failed_early(ex._first_token_error())
            return
        if now - self._last_at >= timeouts.stream_idle_ms / 1000.0:
            reason, limit = reasons.STREAM_IDLE_TIMEOUT, timeouts.stream_idle_ms
        elif now - ex.t0 >= timeouts.stream_ms / 1000.0:
            reason, limit = reasons.STREAM_TIMEOUT, timeouts.stream_ms
        else:
            self._rearm(now)
            return
        self._live = False
        self.measure(now)
        self._break(reason, reasons.REASONS[reason].text(limit_ms=limit))

    def _rearm(self, now: float) -> None:
        """One timer per idle period, not per event: it checks the last event's time when it fires."""
        ex = self._ex
        timeouts = ex._state.route.policy.timeouts
        until = min(self._last_at + timeouts.stream_idle_ms / 1000.0, ex.t0 + timeouts.stream_ms / 1000.0)
        ex._timer = ex._plane.call_later(max(0.0, until - now), self._watch)

    def measure(self, now: float) -> None:
        """Time to first token and the mean gap between events, into ``ex.llm``."""
        llm = self._ex.llm
        first = self._first_at
        if first is None:
            return
        llm.ttft_s = first - self._ex.t0  # type: ignore[union-attr]
        if llm.events > 1:  # type: ignore[union-attr]
            llm.inter_token_s = (self._last_at - first) / (llm.events - 1)  # type: ignore[union-attr]
