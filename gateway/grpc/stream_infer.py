"""ModelStreamInfer on the gateway's gRPC port: a bidirectional stream of unary ModelInfer calls.

Triton's ``grpc_service.proto`` (what ``tritonclient.grpc``'s ``start_stream`` /
``async_stream_infer`` / ``stop_stream`` use) has ``rpc ModelStreamInfer(stream
ModelInferRequest) returns (stream ModelStreamInferResponse)``. Each request message is the
port's unary ModelInfer (``_Service.model_infer``: the same routing, pins, experiments sticky
by the stream's ``x-meshgate-key``, deadline, retries, breakers, counters, one access-log line
per message), with the stream's metadata and a responder of its own (``_Message``). Its answer
leaves as a ``ModelStreamInferResponse`` as soon as it is ready, in completion order, carrying
the request's ``id`` (as Triton's do): the upstream's ``ModelInferResponse`` bytes unchanged
(the ``id`` field appended, the last occurrence wins), or ``error_message`` (``<reason>:
<message>``, the gRPC status name when the upstream's own) and the stream carries on. What a
unary call gets back as metadata, each message gets in its ``infer_response.parameters``
(``string_param`` values, appended as map entries, so the tensors stay as the upstream encoded
them): ``x-meshgate-version``, ``-request-id``, ``-experiment``, ``-arm`` (``-flag``,
``-fallback`` when they apply), and for a failed message ``x-meshgate-error``, its reason.

- The request id: as a unary call's, the caller's ``x-request-id`` when the stream has one,
  numbered per message in the order sent (``<x-request-id>.<n>``, the first ``.1``), so each is
  unique within the stream and the caller can name any of them; else each message gets a fresh
  one from the gateway (signed with its arm when an experiment with metrics routed it, so
  feedback needs no join record). The request's ``id`` field is the stream's correlation of
  answers to requests (clients number it per stream, often from 0 again), never the request
  id, as on the unary call and over HTTP.
- The deadline: ``grpc-timeout`` is the stream's as a whole; each message gets what is left of
  it when it is sent (the route's timeout still applies within it). When it passes, the
  messages in flight are cancelled and the stream ends with DEADLINE_EXCEEDED.
- Backpressure: at most ``stream_max_in_flight`` messages of a stream are in flight (the
  port's option, ``--grpc-stream-max-in-flight``, default 64); beyond that,
  and while answers wait for the client's window, the messages already received wait and no
  WINDOW_UPDATE goes out for the stream, so the client stops sending when its window is spent.
- The end: after the client's half-close, once every answer is out, OK trailers. A compressed
  or oversize message, or a half-close inside a message, ends the stream with its status once
  the answers of the messages before it are out; RST_STREAM or a closed connection cancels the
  messages in flight (their upstream calls).
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

from gateway.grpc import _h2
from gateway.grpc.server import _HEAD, _TIMEOUT, _Answer, _GrpcRequest, _percent_encoded
from models.oip_proto import id_field, request_id, stream_error, stream_response, string_parameters
from router import reasons

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.grpc.server import _Rpc, _Service
    from gateway.http import Headers, Request

__all__ = ["StreamInfer"]

_REQUEST_ID = b"x-request-id"
_OUR_REQUEST_ID = b"x-meshgate-request-id"
_NOT_PER_MESSAGE = frozenset({_TIMEOUT, _REQUEST_ID})  # each message has its own
_STATUS_NAMES = {int(code): code.name for code in reasons.GrpcStatus}
_OURS = b"x-meshgate-"  # the metadata a unary call gets back, per message in its parameters


class _Message(_Answer):
    """The plane's Responder for one request message of a stream."""

    __slots__ = ("_gone", "call", "conn", "disconnected", "done", "id", "request", "started")

    def __init__(self, call: StreamInfer, request: Request) -> None:
        self.call = call
        self.conn = call.rpc.conn
        self.request = request
        self.id = request_id(request.body)  # type: ignore[arg-type]
        self.started = self.done = self.disconnected = False
        self._gone: list[Callable[[], None]] | None = None

    def deliver(
        self, code: int, message: bytes, reason: bytes | None, metadata: Headers, body: bytes
    ) -> None:
        self.call.answered(self, code, message, reason, metadata, body)


class StreamInfer:
    """One ModelStreamInfer call on the stream `rpc`: its request messages read, served and
    answered (`service`: the port's methods)."""

    __slots__ = (
        "_buf",
        "_deadline",
        "_ended",
        "_headed",
        "_max_in_flight",
        "_metadata",
        "_outstanding",
        "_problem",
        "_pumping",
        "_queue",
        "_request_id",
        "_sent",
        "_service",
        "_timer",
        "rpc",
    )

    def __init__(self, rpc: _Rpc, service: _Service) -> None:
        self.rpc = rpc
        self._service = service
        self._buf = bytearray()  # request bytes not yet a whole message
        self._queue: deque[bytes] = deque()  # whole messages waiting for a slot
        self._outstanding: set[_Message] = set()
        self._max_in_flight = rpc.conn._server.stream_max_in_flight
        self._ended = False  # the client half-closed
        self._headed = False  # the response headers are out
        self._pumping = False  # serving waiting messages (an answer given at once pumps no deeper)
        # the stream's end status, not OK: (code, message, reason, a refused message's id)
        self._problem: tuple[int, str, str, bytes | None] | None = None
        request = rpc.request
        assert request is not None
        self._metadata = [pair for pair in request.headers if pair[0] not in _NOT_PER_MESSAGE]
        self._request_id = request.header(_REQUEST_ID)  # the caller's: message n's is "<it>.<n>"
        self._sent = 0  # request messages so far (served, or refused by the service)
        loop = rpc.conn._loop
        timeout = request.header(_TIMEOUT)
        self._deadline = loop.time() + int(timeout) / 1000 if timeout is not None else None
        self._timer = loop.call_at(self._deadline, self._expired) if self._deadline is not None else None
        rpc.more = True
        rpc.on_disconnect(self._cancel)

    # -- request messages in -------------------------------------------------------------------
    def received(self, payload: bytes) -> None:
        """DATA of the stream: whole messages are served, or wait for a slot."""
        if self._problem is not None:
            return
        buf = self._buf
        buf += payload
        limit = self.rpc.conn._max_message
        while len(buf) >= 5:
            if buf[0] != 0:
                self._fail(12, "compressed messages are not supported", reasons.BAD_REQUEST)
                return
            size = int.from_bytes(buf[1:5], "big")
            if size > limit:
                why = reasons.REASONS[reasons.PAYLOAD_TOO_LARGE].text(limit=limit)
                self._fail(8, f"a message ({size} bytes) {why[4:]}", reasons.PAYLOAD_TOO_LARGE)
                return
            if len(buf) < size + 5:
                break
            self._queue.append(bytes(buf[5 : size + 5]))
            del buf[: size + 5]
        self._pump()

    def end(self) -> None:
        """The client half-closed: the stream ends once every answer is out."""
        self._ended = True
        if self._buf and self._problem is None:
            self._fail(3, "the stream ended inside a request message", reasons.BAD_REQUEST)
        self._finish()

    def _pump(self) -> None:
        """Serve the waiting messages while slots are free; read on only when all are served."""
        if self._pumping:
            return
        rpc = self.rpc
        queue, outstanding, most = self._queue, self._outstanding, self._max_in_flight
        self._pumping = True
        try:
            while queue and len(outstanding) < most and not rpc.sending and not rpc.done:
                self._serve(queue.popleft())
        finally:
            self._pumping = False
        held = bool(queue) or len(outstanding) >= most or rpc.sending
        if held:
            rpc.held = True
        elif rpc.held:
            rpc.conn.resume_reading(rpc)

    def _serve(self, body: bytes) -> None:
        request = self._next_request()
        request.body = body
        message = _Message(self, request)
        self._outstanding.add(message)
        self._service.model_infer(request, message)  # type: ignore[arg-type]

    def _next_request(self) -> _GrpcRequest:
        """The next request message's request: the stream's metadata, its numbered
        ``x-request-id`` (when the stream has one) and what is left of the stream's deadline."""
        rpc = self.rpc
        metadata = list(self._metadata)
        self._sent += 1
        if self._request_id is not None:
            metadata.append((_REQUEST_ID, b"%b.%d" % (self._request_id, self._sent)))
        if self._deadline is not None:  # what is left of the stream's deadline, rounded up:
            left = self._deadline - rpc.conn._loop.time()  # the stream's own timer comes first
            metadata.append((_TIMEOUT, b"%d" % max(1, math.ceil(left * 1000))))
        return _GrpcRequest(b"POST", rpc.request.target, metadata, "2", True, rpc.conn._client)  # type: ignore[union-attr]

    # -- answers out ---------------------------------------------------------------------------
    def answered(
        self, message: _Message, code: int, text: bytes, reason: bytes | None, metadata: Headers, body: bytes
    ) -> None:
        """One message's answer, written now (completion order): the ModelInferResponse, or
        ``error_message``, ``<reason>: <message>`` (the status's name for an upstream's own);
        the gateway's metadata of it (``x-meshgate-*``) in its ``parameters``."""
        self._outstanding.discard(message)
        rpc = self.rpc
        if rpc.disconnected or rpc.done:
            return
        if self._deadline is not None and rpc.conn._loop.time() >= self._deadline:
            self._expired()  # the stream's deadline has passed: it ends with DEADLINE_EXCEEDED
            return
        ours = [pair for pair in metadata if pair[0].startswith(_OURS)]
        if code == 0:
            parameters = string_parameters(ours)
            pieces = [memoryview(body)] if body else []
            if message.id:
                pieces.append(id_field(message.id))
            if parameters:  # appended: the upstream's tensors are not re-encoded
                pieces.append(parameters)
            pieces = stream_response(pieces)
        else:
            rid = message.request.header(_REQUEST_ID)
            if rid is not None and not any(name == _OUR_REQUEST_ID for name, _ in ours):
                ours.append((_OUR_REQUEST_ID, rid))  # refused before routing: its numbered id
            name = reason or _STATUS_NAMES.get(code, str(code)).encode()
            text = name + b": " + text if text and text != reason else name
            pieces = [stream_error(text, message.id, string_parameters(ours))]
        self._write(pieces)
        self._pump()
        self._finish()

    def _write(self, pieces: list) -> None:
        rpc = self.rpc
        conn = rpc.conn
        out = []
        if not self._headed:
            self._headed = True
            out.append(_h2.header_frames(rpc.id, _HEAD, False, conn._max_frame))
        size = sum(len(piece) for piece in pieces)
        rpc.chunks.append(b"\x00" + size.to_bytes(4, "big"))
        rpc.chunks.extend(pieces)
        rpc.left += size + 5
        rpc.sending = True
        conn.send(rpc, out)

    def drained(self) -> None:
        """The answers written so far are out (the client's window took them)."""
        self._pump()
        self._finish()

    def _finish(self) -> None:
        """After the half-close, once nothing is in flight or waiting: the trailers."""
        rpc = self.rpc
        if not self._ended or self._outstanding or self._queue or rpc.sending or rpc.done:
            return
        self._close()
        code, text, reason, rid = self._problem or (0, "", "", None)
        conn = rpc.conn
        fields = [_h2.field(b"x-meshgate-error", reason.encode())] if reason else []
        if rid is not None:  # the refused request message's numbered id
            fields.append(_h2.field(_OUR_REQUEST_ID, rid))
        if not self._headed:  # no answer at all: trailers only
            conn.refuse(rpc, code, text.encode(), fields)
            return
        block = [_h2.field(b"grpc-status", b"%d" % code)]
        if text:
            block.append(_h2.field(b"grpc-message", _percent_encoded(text.encode())))
        block += fields
        rpc.tail = _h2.header_frames(rpc.id, b"".join(block), True, conn._max_frame)
        conn.send(rpc, [])

    def _fail(self, code: int, text: str, reason: str, message: bool = True) -> None:
        """The stream cannot go on: nothing more is read; it ends with this status once the
        answers of the messages before are out (logged as a refusal; with `message`, of a
        request message the plane never had: counted among the requests too, numbered as the
        stream's messages are, so its line and the trailers carry ``<x-request-id>.<n>``)."""
        request = self._next_request() if message else self.rpc.request
        assert request is not None
        self._problem = (code, text, reason, request.header(_REQUEST_ID) if message else None)
        self._buf.clear()
        self._ended = True
        self._service._plane.refused(request, reasons.STATUS[reason], reason, code, counted=not message)
        self._finish()

    def _expired(self) -> None:
        """The stream's deadline: the messages in flight are cancelled; DEADLINE_EXCEEDED."""
        if self._timer is not None:  # called by an answer that came at the deadline
            self._timer.cancel()
            self._timer = None
        if self.rpc.done or self.rpc.disconnected or self._problem is not None:
            return
        self._queue.clear()
        self._cancel_messages()
        self._fail(4, "the stream's deadline (grpc-timeout) passed", reasons.DEADLINE_EXCEEDED, False)

    def _cancel(self) -> None:
        """RST_STREAM or the connection closed: the messages in flight are cancelled."""
        self._close()
        self._queue.clear()
        self._cancel_messages()

    def _cancel_messages(self) -> None:
        messages, self._outstanding = self._outstanding, set()
        for message in messages:
            message.gone()

    def _close(self) -> None:
        self.rpc.more = False
        self.rpc.done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
