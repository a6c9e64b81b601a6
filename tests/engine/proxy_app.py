"""A minimal proxy on the engine: every request goes to one upstream. Used by the tests and the benchmark.

Run alone: `python -m tests.engine.proxy_app --upstream http://127.0.0.1:9000 --port 0`; it prints
`LISTENING <port>` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import uvloop

from gateway.http import (
    JSON_HEADERS,
    Request,
    Responder,
    Server,
    ServerLimits,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    error_body,
    proxy_headers,
    relay,
    start_server,
)


class ProxyApp:
    """Forwards everything to one endpoint; answers upstream failures with meshgate's error JSON."""

    __slots__ = ("endpoint", "outcomes", "timeout")

    def __init__(self, pool: UpstreamPool, upstream: str, timeout: float = 30.0) -> None:
        self.endpoint = pool.endpoint(upstream)
        self.timeout = timeout
        self.outcomes: list[tuple[int, str | None]] = []  # (status, error reason), for tests

    def __call__(self, request: Request, responder: Responder) -> None:
        headers = proxy_headers(request)
        if request.body is None:
            self.endpoint.forward_stream(
                request, responder, request.method, request.target, headers, self.timeout, self._done
            )
            return

        def answered(response: UpstreamResponse | None, error: UpstreamError | None) -> None:
            if response is not None:
                relay(response, responder, [(b"x-proxied-by", b"engine")], self._done)
                return
            assert error is not None
            self._done(error.status, error)
            if not responder.disconnected:
                responder.respond(error.status, JSON_HEADERS, error_body(error.reason, error.message))

        handle = self.endpoint.send(
            request.method, request.target, headers, request.body, self.timeout, answered
        )
        responder.on_disconnect(handle.cancel)

    def _done(self, status: int, error: UpstreamError | None) -> None:
        if len(self.outcomes) < 10_000:
            self.outcomes.append((status, error.reason if error else None))


async def serve_proxy(
    upstream: str, host: str = "127.0.0.1", port: int = 0, limits: ServerLimits | None = None
) -> tuple[Server, ProxyApp, UpstreamPool]:
    pool = UpstreamPool()
    app = ProxyApp(pool, upstream)
    server = await start_server(app, host, port, limits=limits or ServerLimits())
    return server, app, pool


async def _main(args: argparse.Namespace) -> None:
    server, _, pool = await serve_proxy(args.upstream, args.host, args.port)
    print(f"LISTENING {server.port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        server.close()
        await pool.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            runner.run(_main(args))
        except KeyboardInterrupt:
            sys.exit(0)


if __name__ == "__main__":
    main()
