"""HTTP/2 through the sidecar: gRPC connections relayed as bytes, and the refusals it answers itself.

The sidecar does not speak HTTP/2 for the traffic it lets through. A connection that
negotiated ALPN ``h2`` (inbound, over mTLS) or opened with the HTTP/2 preface (outbound,
plaintext) is authorized once, by the caller's verified identity, and from then on its bytes
go to the upstream connection unchanged - frames, flow control, trailers and all - so streams,
deadlines and large messages behave exactly as between the two ends, and the sidecar costs one
``write`` per read. Authorization is per connection: policies name identities, not methods, so
no header block needs decoding (an HPACK decoder and its dynamic table would be the price of
authorizing per method). A policy change re-checks open connections (:meth:`Relays.revoke`).

A caller the sidecar refuses gets an answer, not a dropped connection: :class:`Refusal` speaks
the few frames needed to answer each stream with a trailers-only gRPC status and
``x-meshgate-error`` (HPACK literals without Huffman coding, which every decoder reads).

Each side pauses reading while the other side's write buffer is over its high-water mark, and
a side that closes closes the other after its buffered bytes are written.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from urllib.parse import quote

from router.reasons import REASONS, UPSTREAM_UNREACHABLE

__all__ = ["PREFACE", "Front", "Refusal", "Relay", "Relays"]

log = logging.getLogger("meshgate.sidecar")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HIGH_WATER = 1024 * 1024  # per side: a 16 MB message flows through without a pause per frame
_MAX_FRAME = 16_384  # SETTINGS_MAX_FRAME_SIZE's default: what a Refusal accepts
_REFUSAL_IDLE_S = 30.0  # a refused caller that sends nothing more is closed after this

# frame types and flags (RFC 9113 section 6)
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _CONTINUATION = 0, 1, 3, 4, 6, 7, 9
_END_STREAM, _ACK, _END_HEADERS = 0x1, 0x1, 0x4

H2Handler = Callable[[asyncio.Transport, bytes], asyncio.Protocol]
"""Makes the protocol that takes over an HTTP/2 connection (with the bytes already read)."""


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


def _hpack_int(value: int) -> bytes:
    """An HPACK integer with a 7-bit prefix (string lengths, Huffman bit clear)."""
    if value < 127:
        return bytes((value,))
    out, value = bytearray((127,)), value - 127
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, new name (RFC 7541 section 6.2.2)."""
    return b"\x00" + _hpack_int(len(name)) + name + _hpack_int(len(value)) + value


def trailers_only(reason: str, message: str) -> bytes:
    """The header block of a trailers-only gRPC answer: status for ``reason``, its message, its code."""
    return (
        b"\x88"  # :status 200 (static table index 8)
        + _literal(b"content-type", b"application/grpc")
        + _literal(b"grpc-status", str(int(REASONS[reason].grpc)).encode())
        + _literal(b"grpc-message", quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode())
        + _literal(b"x-meshgate-error", reason.encode())
    )


class Refusal(asyncio.Protocol):
    """A minimal HTTP/2 server that answers every stream with one gRPC error, then waits for the
    caller to close (closing first could reset the connection before the answer is read)."""

    __slots__ = ("_block", "_buffer", "_idle", "_open_headers", "_preface", "_transport")

    def __init__(self, reason: str, message: str, received: bytes = b"") -> None:
        self._block = trailers_only(reason, message)
        self._buffer = bytearray(received)
        self._preface = False
        self._open_headers = 0  # a stream whose header block continues in CONTINUATION frames
        self._transport: asyncio.Transport | None = None
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._transport.write(_frame(_SETTINGS, 0, 0))  # the server's preface
        self._read()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._read()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._transport = None

    def _read(self) -> None:
        transport, buf = self._transport, self._buffer
        if transport is None or transport.is_closing():
            return
        if not self._preface:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(buf)):
                    transport.close()
                return
            if not buf.startswith(PREFACE):
                transport.close()
                return
            del buf[: len(PREFACE)]
            self._preface = True
        while len(buf) >= 9:
            length = int.from_bytes(buf[0:3], "big")
            if length > _MAX_FRAME:  # larger than our SETTINGS allow: a protocol error
                transport.close()
                return
            if len(buf) < 9 + length:
                break
            kind, flags = buf[3], buf[4]
            stream = int.from_bytes(buf[5:9], "big") & 0x7FFF_FFFF
            payload = bytes(buf[9 : 9 + length])
            del buf[: 9 + length]
            self._frame(transport, kind, flags, stream, payload)
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(_REFUSAL_IDLE_S, transport.close)

    def _frame(
        self, transport: asyncio.Transport, kind: int, flags: int, stream: int, payload: bytes
    ) -> None:
        if kind == _SETTINGS and not flags & _ACK:
            transport.write(_frame(_SETTINGS, _ACK, 0))
        elif kind == _PING and not flags & _ACK:
            transport.write(_frame(_PING, _ACK, 0, payload))
        elif kind == _HEADERS and stream:
            if flags & _END_HEADERS:
                self._answer(transport, stream)
            else:
                self._open_headers = stream
        elif kind == _CONTINUATION and stream == self._open_headers and flags & _END_HEADERS:
            self._open_headers = 0
            self._answer(transport, stream)
        elif kind == _GOAWAY:
            transport.close()

    def _answer(self, transport: asyncio.Transport, stream: int) -> None:
        # The answer, then RST_STREAM NO_ERROR: "stop sending the request" (RFC 9113 section 8.1).
        transport.write(
            _frame(_HEADERS, _END_STREAM | _END_HEADERS, stream, self._block)
            + _frame(_RST_STREAM, 0, stream, b"\0\0\0\0")
        )


class _End(asyncio.Protocol):
    """One side of a relay: what it reads is written to the other side once the relay is linked."""

    __slots__ = ("other", "pending", "relay", "transport")

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.other: _End | None = None  # set when both sides may talk
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is not None:
            other.transport.write(data)  # type: ignore[union-attr]
        else:
            self.pending.append(data)

    def pause_writing(self) -> None:  # our side is full: stop reading the side that fills it
        other = self.other
        if other is not None and not other.transport.is_closing():  # type: ignore[union-attr]
            other.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        other = self.other
        if other is not None and not other.transport.is_closing():  # type: ignore[union-attr]
            other.transport.resume_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        return False  # close: the other side is closed after what it has buffered is written

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.close()


class Relay:
    """A caller's HTTP/2 connection joined to an upstream one (made by :meth:`Relays.open`)."""

    __slots__ = ("_closed", "_connect", "_relays", "caller", "client", "upstream")

    def __init__(self, relays: Relays, caller: object) -> None:
        self._relays = relays
        self.caller = caller  # what the sidecar authorized (re-checked when the policy changes)
        self.client = _End(self)
        self.upstream = _End(self)
        self._connect: asyncio.Task | None = None
        self._closed = False

    def link(self) -> None:
        """Both sides may talk: what each side sent meanwhile goes out first."""
        client, upstream = self.client, self.upstream
        client.other, upstream.other = upstream, client
        for side in (client, upstream):
            if side.pending:
                side.other.transport.write(b"".join(side.pending))  # type: ignore[union-attr]
                side.pending = []

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._connect is not None:
            self._connect.cancel()
        for side in (self.client, self.upstream):
            if side.transport is not None and not side.transport.is_closing():
                side.transport.close()
        self._relays.forget(self)


Verify = Callable[[ssl.SSLObject], tuple[str, str] | None]
"""Checks an upstream TLS peer before anything is written to it: None, or (reason, message)."""


class Relays:
    """The open relays of one listener: opened, re-checked and closed together."""

    def __init__(self) -> None:
        self.open_relays: set[Relay] = set()

    def open(
        self,
        transport: asyncio.Transport,
        received: bytes,
        upstream: tuple[str, int],
        *,
        caller: object = None,
        ssl_context: ssl.SSLContext | None = None,
        verify: Verify | None = None,
    ) -> asyncio.Protocol:
        """The protocol that takes over ``transport``: it relays to ``upstream`` once connected.

        While the upstream connection is made the caller is not read; if it cannot be made (or
        its peer fails ``verify``), the caller's streams are answered with the reason instead.
        """
        relay = Relay(self, caller)
        self.open_relays.add(relay)
        client = relay.client
        if received:
            client.pending.append(received)
        transport.pause_reading()
        loop = asyncio.get_running_loop()
        host, port = upstream

        def connected(task: asyncio.Task) -> None:
            relay._connect = None
            if transport.is_closing():
                relay.close()
                return
            refusal = _failure(task, host, port, verify)
            if refusal is not None:
                relay._closed = True  # the caller's connection stays, for the answer
                self.forget(relay)
                log.warning("HTTP/2 relay to %s:%d refused: %s", host, port, refusal[1])
                pending, client.pending = b"".join(client.pending), []
                if not task.cancelled() and task.exception() is None:
                    task.result()[0].close()
                answer = Refusal(*refusal, pending)
                transport.set_protocol(answer)
                answer.connection_made(transport)
                transport.resume_reading()
                return
            relay.link()
            transport.resume_reading()

        relay._connect = loop.create_task(
            loop.create_connection(
                lambda: relay.upstream,
                host,
                port,
                ssl=ssl_context,
                server_hostname=host if ssl_context else None,
            )
        )
        relay._connect.add_done_callback(connected)
        return client

    def revoke(self, still_allowed: Callable[[object], bool]) -> int:
        """Close the relays whose caller is no longer allowed; how many."""
        gone = [r for r in self.open_relays if not still_allowed(r.caller)]
        for relay in gone:
            relay.close()
        return len(gone)

    def forget(self, relay: Relay) -> None:
        self.open_relays.discard(relay)

    def close_all(self) -> None:
        for relay in list(self.open_relays):
            relay.close()


def _failure(task: asyncio.Task, host: str, port: int, verify: Verify | None) -> tuple[str, str] | None:
    if task.cancelled():
        return UPSTREAM_UNREACHABLE, f"cannot connect to {host}:{port}: cancelled"
    exc = task.exception()
    if exc is not None:
        return UPSTREAM_UNREACHABLE, f"cannot connect to {host}:{port}: {exc}"
    transport, _ = task.result()
    ssl_object = transport.get_extra_info("ssl_object")
    if verify is not None and ssl_object is not None:
        return verify(ssl_object)
    return None


class Front(asyncio.Protocol):
    """A connection's first protocol: HTTP/2 to ``on_h2``, anything else to the HTTP/1.1 engine.

    Over TLS the ALPN choice decides at once; on a plaintext port the first bytes do (the
    HTTP/2 preface). Until they arrive the engine already owns the connection, so its header
    timeout applies to a caller that sends nothing.
    """

    __slots__ = ("_buffer", "_engine", "_http", "_on_h2", "_transport")

    def __init__(self, engine: Callable[[], asyncio.Protocol], on_h2: H2Handler) -> None:
        self._engine = engine
        self._on_h2 = on_h2
        self._http: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            self._hand_to_h2(b"")
            return
        self._http = http = self._engine()
        if ssl_object is not None:
            transport.set_protocol(http)
        http.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        if len(buffer) < len(PREFACE) and PREFACE.startswith(buffer):
            self._buffer = buffer  # perhaps HTTP/2: wait for the rest of the preface
            return
        if buffer.startswith(PREFACE):
            self._http.connection_lost(None)  # type: ignore[union-attr]  # it never saw a byte
            self._hand_to_h2(buffer)
            return
        http = self._http
        self._transport.set_protocol(http)  # type: ignore[union-attr,arg-type]
        http.data_received(buffer)  # type: ignore[union-attr]

    def _hand_to_h2(self, received: bytes) -> None:
        transport = self._transport
        protocol = self._on_h2(transport, received)  # type: ignore[arg-type]
        transport.set_protocol(protocol)  # type: ignore[union-attr]
        protocol.connection_made(transport)  # type: ignore[arg-type]

    # until the first bytes decide, the engine handles everything else
    def eof_received(self) -> bool | None:
        return self._http.eof_received() if self._http is not None else None  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._http is not None:
            self._http.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._http is not None:
            self._http.pause_writing()

    def resume_writing(self) -> None:
        if self._http is not None:
            self._http.resume_writing()
