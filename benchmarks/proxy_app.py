"""A minimal proxy on the engine: each request goes to one upstream, split by weight.

The engine alone, as `benchmarks.bench_proxy` and `bench_hotpath` measure it (the engine tests use
it too). Run alone:
`python -m benchmarks.proxy_app --upstream http://127.0.0.1:9000 [--upstream URL --weights 90,10]`;
it prints `LISTENING <port>` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import random
import sys

from gateway.http import (
    Request,
    Responder,
    Server,
    ServerLimits,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    error_response,
    new_event_loop,
    proxy_headers,
    relay,
    start_server,
    tune_gc,
)


class ProxyApp:
    """Forwards each request to an endpoint picked by weight; upstream failures become error JSON."""

    __slots__ = ("_bounds", "_endpoints", "_random", "outcomes", "timeout")

    def __init__(
        self,
        pool: UpstreamPool,
        upstreams: list[str],
        weights: list[float] | None = None,
        timeout: float = 30.0,
    ) -> None:
        weights = weights or [1.0] * len(upstreams)
        if len(weights) != len(upstreams) or min(weights) <= 0:
            raise ValueError("one positive weight per upstream")
        self._endpoints = [pool.endpoint(url) for url in upstreams]
        total = sum(weights)
        self._bounds = [w / total for w in itertools.accumulate(weights)][:-1]
        self._random = random.Random(7).random
        self.timeout = timeout
        self.outcomes: list[tuple[int, str | None]] = []  # (status, error reason), for tests

    def __call__(self, request: Request, responder: Responder) -> None:
        headers = proxy_headers(request)
        endpoint = self._endpoints[bisect.bisect(self._bounds, self._random())]
        if request.body is None:
            endpoint.forward_stream(
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
                responder.respond(*error_response(error.reason, error.message))

        handle = endpoint.send(
            request.method, request.target, headers, request.body, self.timeout, answered
        )
        responder.on_disconnect(handle.cancel)

    def _done(self, status: int, error: UpstreamError | None) -> None:
        if len(self.outcomes) < 10_000:
            self.outcomes.append((status, error.reason if error else None))


async def serve_proxy(
    upstream: str | list[str],
    host: str = "127.0.0.1",
    port: int = 0,
    limits: ServerLimits | None = None,
    weights: list[float] | None = None,
) -> tuple[Server, ProxyApp, UpstreamPool]:
    pool = UpstreamPool()
    app = ProxyApp(pool, [upstream] if isinstance(upstream, str) else upstream, weights)
    server = await start_server(app, host, port, limits=limits or ServerLimits())
    return server, app, pool


async def _main(args: argparse.Namespace) -> None:
    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    server, _, pool = await serve_proxy(args.upstream, args.host, args.port, weights=weights)
    tune_gc()
    print(f"LISTENING {server.port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        server.close()
        await pool.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", action="append", required=True, help="repeat for a split")
    parser.add_argument("--weights", help="comma-separated, one per --upstream, e.g. 90,10")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        try:
            runner.run(_main(args))
        except KeyboardInterrupt:
            sys.exit(0)


if __name__ == "__main__":
    main()
