"""Structured access log: one JSON line per inference request.

Fields: ``time`` (UTC, RFC 3339, ms), ``request_id``, ``trace_id`` (null when untraced),
``model``, ``version`` (the one that answered), ``experiment``, ``arm``, ``status``,
``reason`` (meshgate's reason code, null on success), ``duration_ms``, ``attempts``
(upstream attempts), ``fallback``. A request on the OpenAI-compatible routes adds what the
gateway measured of it (``ex.llm``): ``stream``, ``ttft_ms`` and ``inter_token_ms`` (streams),
``prompt_tokens``, ``completion_tokens``, ``cost_usd`` (null when unknown) and ``broken``
(the stream ended midway). ``protocol`` is ``"http"`` or ``"grpc"`` (``"http/1.1"``: an
HTTP/1.1 request spoken to the gRPC port, refused); a gRPC line (a call on the
gateway's gRPC port) adds ``grpc_status`` and ``grpc_status_name``, the status the caller got
(``7``, ``"PERMISSION_DENIED"``): the upstream's own, or the one of meshgate's reason, as the
gRPC port answers it. ``status`` stays the HTTP-equivalent (``403``), so one query spans both.
The protocol is the front end's (``Request.protocol``), not guessed from the HTTP version.
A request refused before routing (404 for an unknown model, 405, a bad
``x-meshgate-timeout-ms``) gets a line too, as Envoy logs its ``NR`` requests: model and
version null, its ``path`` (without the query; a gRPC call's is its method) and the caller's
``x-request-id`` if it sent one. So do the calls the gRPC port refuses before the plane sees
them (an unknown method, a compressed, oversize or incomplete message, another content-type,
``protocol`` ``"grpc"``), with the gRPC status they were sent, and HTTP/1.1 spoken to the
gRPC port (``protocol`` ``"http/1.1"``, its HTTP path, ``bad_request``, no gRPC status: it
was answered in HTTP/1.1). Never a header value other than the request id and trace id,
never a body: tokens and payloads cannot leak through it.

Lines are buffered in memory and written in one call every ``flush_interval_s`` (and every
256 lines, and on shutdown), so the hot path never makes a system call for them.
The log is on by default; ``MESHGATE_ACCESS_LOG`` (off | stdout | stderr | a file path) or
``--access-log/--no-access-log`` switches it.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, TextIO

from gateway.telemetry.tracing import TelemetryConfigError, caller_trace_id, trace_id_of
from router.reasons import REASONS, GrpcStatus

if TYPE_CHECKING:
    from gateway.dataplane.exchange import Exchange
    from gateway.dataplane.llm_usage import LlmUsage
    from gateway.http import Request, UpstreamResponse

__all__ = ["AccessLog", "access_log_target"]

_OFF = frozenset({"off", "0", "false", "no", "none"})
_ON = frozenset({"on", "1", "true", "yes", "stdout"})
# Lines written per call: a 60 KB write costs a file ~half as much per line as a 500 KB one
# (whose join and encoding get fresh memory from the kernel every time)
_MAX_PENDING = 256
_MAX_MIDDLES = 4096
_MS = tuple(f'.{ms:03d}Z","request_id":' for ms in range(1000))
_q = encode_basestring_ascii


_GRPC_NAMES = {int(code): _q(code.name) for code in GrpcStatus}
_UNKNOWN = int(GrpcStatus.UNKNOWN)


def grpc_status(status: int, reason: str | None, response: UpstreamResponse | None) -> int:
    """The gRPC status a call was answered with, from the plane's outcome, as the gRPC port maps
    it: the upstream's ``grpc-status`` when it sent one (a reason overrides an OK), else the
    reason's status, else OK below HTTP 400 and UNKNOWN above."""
    code = None
    if response is not None:
        for name, value in response.headers:
            if name == b"grpc-status":
                code = int(value) if value.isdigit() else _UNKNOWN
                break
    if code is None or (code == 0 and reason is not None):
        why = REASONS.get(reason) if reason is not None else None
        code = int(why.grpc) if why is not None else (0 if status < 400 else _UNKNOWN)
    return code


def _grpc_fields(code: int | None, protocol: str = "http") -> str:
    if code is None:  # not answered in gRPC: the data port's, or HTTP/1.1 spoken to the gRPC port
        return ',"protocol":"http"' if protocol == "http" else f',"protocol":{_q(protocol)}'
    return (
        f',"protocol":"grpc","grpc_status":{code:d},"grpc_status_name":{_GRPC_NAMES.get(code, _q(str(code)))}'
    )


def _opt(value: str | None) -> str:
    return "null" if value is None else _q(value)


def _num(value: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "null" if value is None else f"{value * scale:.{digits}f}"


def _cost(usd: float | None) -> str:
    return "null" if usd is None or not math.isfinite(usd) else f"{usd:.9g}"


def _llm_fields(llm: LlmUsage) -> str:
    """The LLM fields that close a line (numbers and booleans only: nothing to escape)."""
    return (
        f',"stream":{"true" if llm.streamed else "false"},"ttft_ms":{_num(llm.ttft_s, 1000.0)},'
        f'"inter_token_ms":{_num(llm.inter_token_s, 1000.0)},'
        f'"prompt_tokens":{"null" if llm.prompt_tokens is None else int(llm.prompt_tokens)},'
        f'"completion_tokens":{"null" if llm.completion_tokens is None else int(llm.completion_tokens)},'
        f'"cost_usd":{_cost(llm.cost_usd)},'
        f'"broken":{"true" if llm.broken else "false"}}}'
    )


def access_log_target(env: Mapping[str, str], flag: bool | None = None) -> str | None:
    """Where the log goes: "stdout", "stderr", a file path, or None (off).

    ``flag`` is the command line's ``--access-log``/``--no-access-log`` and wins over the
    environment's ``MESHGATE_ACCESS_LOG``; the default is stdout.
    """
    if flag is False:
        return None
    raw = env.get("MESHGATE_ACCESS_LOG", "").strip()
    low = raw.lower()
    if low in _OFF:
        return "stdout" if flag else None
    if not raw or low in _ON:
        return "stdout"
    if low == "stderr":
        return "stderr"
    return raw


class AccessLog:
    """The observer that formats lines, and the writer that flushes them."""

    def __init__(
        self,
        stream: TextIO,
        *,
        wall: Callable[[], float] = time.time,
        flush_interval_s: float = 0.5,
        close_stream: bool = False,
    ) -> None:
        self._stream = stream
        self._wall = wall
        self.flush_interval_s = flush_interval_s
        self._close = close_stream
        self._lines: list[str] = []
        self._second_ms = -1000  # the current second's start (ms since the epoch) and its date
        self._prefix = ""
        self._middles: dict[tuple, tuple[str, str]] = {}
        self.dropped = 0

    @classmethod
    def open(cls, target: str) -> AccessLog:
        if target == "stdout":
            return cls(sys.stdout)
        if target == "stderr":
            return cls(sys.stderr)
        try:
            stream = open(target, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise TelemetryConfigError(f"cannot open the access log {target}: {exc.strerror}") from None
        return cls(stream, close_stream=True)

    def observe(
        self, ex: Exchange, status: int, reason: str | None, response: UpstreamResponse | None
    ) -> None:
        # Formatted by hand (json.dumps of a dict costs 3x); every string is JSON-escaped. What
        # the route table bounds (model, version, arm, outcome) is formatted once per distinct
        # outcome and cached, the date once a second; per request only the ids, time, duration.
        choice = ex.choice
        key = (
            ex.model.name,
            ex.version,
            choice.experiment,
            choice.arm,
            status,
            reason,
            ex.attempts,
            ex.fallback,
            grpc_status(status, reason, response) if ex.request.protocol == "grpc" else None,
        )
        middle = self._middles.get(key) or self._middle(key)
        tr = ex.trace  # None: untraced here, only the caller's traceparent can name a trace
        if tr is False:  # the plane saw no traceparent and no trace was started
            trace_id = None
        else:
            trace_id = caller_trace_id(ex.request.headers) if tr is None else trace_id_of(ex)
        llm = ex.llm
        ms = int(self._wall() * 1000.0) - self._second_ms  # _time() and _add(), inline
        if not 0 <= ms < 1000:
            ms = self._second(ms + self._second_ms)
        lines = self._lines
        lines.append(
            f"{self._prefix}{_MS[ms]}{_q(ex.request_id)},"
            f'"trace_id":{"null" if trace_id is None else _q(trace_id)},{middle[0]}'
            f"{(time.monotonic() - ex.t0) * 1000.0:.3f}"
            f"{middle[1] if llm is None else middle[1][:-1] + _llm_fields(llm)}"
        )
        if len(lines) >= _MAX_PENDING:
            self.flush()

    def refused(self, request: Request, status: int, reason: str, answered: int | None = None) -> None:
        """A request refused before routing (an unknown model, a wrong method, a bad header, a
        call the gRPC port refuses itself): no model or version answered it, so the line names
        the path that was asked for (never the query, which may hold secrets) and the caller's
        request id when it sent one. `answered`: the gRPC status sent, when not the reason's."""
        rid = request.header(b"x-request-id")
        code = None
        protocol = request.protocol
        if protocol == "grpc":
            code = grpc_status(status, reason, None) if answered is None else answered
        self._add(
            f"{self._time()}{'null' if rid is None else _q(rid.decode('latin-1'))},"
            f'"trace_id":{_opt(caller_trace_id(request.headers))},"model":null,"version":null,'
            f'"experiment":null,"arm":null,"status":{status:d},"reason":{_q(reason)},'
            f'"duration_ms":null,"attempts":0,"fallback":false{_grpc_fields(code, protocol)},'
            f'"path":{_q(request.path)}}}'
        )

    def _time(self) -> str:
        """The line's start: ``{"time":"<RFC 3339 UTC, ms>","request_id":``."""
        ms = int(self._wall() * 1000.0) - self._second_ms
        if not 0 <= ms < 1000:  # another second (or the clock went back)
            ms = self._second(ms + self._second_ms)
        return f"{self._prefix}{_MS[ms]}"

    def _add(self, line: str) -> None:
        lines = self._lines
        lines.append(line)
        if len(lines) >= _MAX_PENDING:
            self.flush()

    def _second(self, ms: int) -> int:
        """Format the date of the second ``ms`` (ms since the epoch) falls in; the ms within it."""
        second, ms = divmod(ms, 1000)
        self._second_ms = second * 1000
        self._prefix = '{"time":"' + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return ms

    def _middle(self, key: tuple) -> tuple[str, str]:
        """The fields around ``duration_ms`` for one outcome, JSON-escaped, cached (bounded)."""
        model, version, experiment, arm, status, reason, attempts, fallback, code = key
        if len(self._middles) >= _MAX_MIDDLES:  # upstream statuses vary; the table bounds the rest
            self._middles.clear()
        middle = self._middles[key] = (
            f'"model":{_q(model)},"version":{_q(version)},"experiment":{_opt(experiment)},'
            f'"arm":{_opt(arm)},"status":{status:d},"reason":{_opt(reason)},"duration_ms":',
            f',"attempts":{attempts:d},"fallback":{"true" if fallback else "false"}{_grpc_fields(code)}}}',
        )
        return middle

    def flush(self) -> None:
        """Write the pending lines in one call."""
        lines = self._lines
        if not lines:
            return
        self._lines = []
        lines.append("")
        try:
            self._stream.write("\n".join(lines))
            self._stream.flush()
        except (OSError, ValueError):
            self.dropped += len(lines) - 1  # a closed or broken stream must not break serving

    def close(self) -> None:
        self.flush()
        if self._close:
            self._stream.close()

    async def run(self) -> None:
        """Flush every interval; flush and close when cancelled (shutdown)."""
        try:
            while True:
                await asyncio.sleep(self.flush_interval_s)
                self.flush()
        finally:
            self.close()
