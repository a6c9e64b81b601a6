"""The exchange executes its attempt sequence's decisions: every path, on a fake clock.

No sockets and no event loop: the plane gets the fake clock, timers that follow it, and
duck-typed endpoints and responders (the I/O boundary an Exchange talks to), so each test
says exactly when an upstream answers and when time passes.
"""

from __future__ import annotations

import random

import pytest

from gateway.dataplane.plane import DataPlane
from gateway.http import CANCELLED, Request, UpstreamError, UpstreamPool, UpstreamResponse
from router.policy import TrafficPolicy
from router.table import ModelRoute, RouteTable, VersionRoute
from tests.support import FakeClock

A, B = "http://a:1", "http://b:1"


class Timer:
    def __init__(self, at: float, fn) -> None:
        self.at, self.fn, self.cancelled = at, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    """``call_later`` on the fake clock: `advance` moves time and fires what fell due."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.pending: list[Timer] = []

    def __call__(self, delay: float, fn) -> Timer:
        timer = Timer(self.clock.t + delay, fn)
        self.pending.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        for timer in sorted(self.pending, key=lambda t: t.at):
            if timer.at <= self.clock.t and not timer.cancelled:
                self.pending.remove(timer)
                timer.fn()
        self.pending = [t for t in self.pending if not t.cancelled]

    def live(self) -> list[Timer]:
        return [t for t in self.pending if not t.cancelled]


class Call:
    """One upstream call in flight (the Handle an Endpoint returns)."""

    def __init__(self, url, target, headers, timeout, callback, extra_head) -> None:
        self.url, self.target, self.headers, self.timeout = url, target, headers, timeout
        self.extra_head = extra_head
        self._callback = callback
        self.cancelled = False

    def answer(self, status: int = 200, body: bytes = b'{"outputs":[]}', headers=()) -> None:
        callback, self._callback = self._callback, None
        callback(UpstreamResponse(status, list(headers), body, None, len(body), None, None), None)

    def fail(self, reason: str, message: str = "failed") -> None:
        callback, self._callback = self._callback, None
        callback(None, UpstreamError(reason, message))

    def cancel(self) -> None:
        self.cancelled = True
        if self._callback is not None:
            self.fail(CANCELLED, "the upstream call was cancelled")


class Endpoint:
    def __init__(self, url: str) -> None:
        self.url = url
        self.calls: list[Call] = []

    def send(self, method, target, headers, body, timeout, callback, extra_head=b"") -> Call:
        call = Call(self.url, target, headers, timeout, callback, extra_head)
        self.calls.append(call)
        return call


class Upstreams:
    """The plane's Upstreams, with fake endpoints by URL."""

    def __init__(self) -> None:
        self.by_url: dict[str, Endpoint] = {}

    def endpoint(self, vr, index: int) -> Endpoint:
        url = vr.endpoints[index]
        return self.by_url.setdefault(url, Endpoint(url))

    def endpoints(self, state) -> tuple[Endpoint, ...]:
        return tuple(self.endpoint(state.route, i) for i in range(len(state.route.endpoints)))


class Responder:
    def __init__(self, request: Request) -> None:
        self.request = request
        self.answers: list[tuple[int, dict[bytes, bytes], bytes]] = []
        self.started = self.done = self.disconnected = False
        self._gone = []

    def respond(self, status, headers, body=b"", extra=(), raw=b"") -> None:
        fields = dict(headers) | dict(extra)
        for line in raw.split(b"\r\n"):
            if line:
                name, value = line.split(b": ", 1)
                fields[name] = value
        self.answers.append((status, fields, body))
        self.started = self.done = True

    def on_disconnect(self, callback) -> None:
        self._gone.append(callback)

    def hang_up(self) -> None:
        self.disconnected = True
        for callback in self._gone:
            callback()

    @property
    def status(self) -> int:
        return self.answers[0][0]

    def header(self, name: bytes) -> bytes | None:
        return self.answers[0][1].get(name)


class World:
    def __init__(self, versions: dict[str, tuple[list[str], dict]], fallback=None) -> None:
        self.clock = FakeClock(100.0)
        self.timers = Timers(self.clock)
        self.plane = DataPlane(UpstreamPool(), rng=random.Random(3), now=self.clock, call_later=self.timers)
        self.upstreams = self.plane.upstreams = Upstreams()  # type: ignore[assignment]
        self.completed: list[tuple[int, str | None]] = []
        self.plane.observers.append(
            lambda ex, status, reason, response: self.completed.append((status, reason))
        )
        self.set(versions, fallback)

    def set(self, versions, fallback=None, config_version: int = 1) -> None:
        fallback = fallback or {}
        routes = {
            v: VersionRoute(v, tuple(eps), None, TrafficPolicy.from_dict(policy), fallback.get(v, ()))
            for v, (eps, policy) in versions.items()
        }
        self.plane.set_table(RouteTable(config_version, {"m": ModelRoute("m", next(iter(routes)), routes)}))

    def request(self, headers=()) -> Responder:
        request = Request(b"POST", b"/v2/models/m/infer", list(headers), "1.1", True, ("127.0.0.1", 5000))
        request.body = b'{"inputs":[]}'
        responder = Responder(request)
        self.plane.handle(request, responder)
        return responder

    def calls(self, url: str) -> list[Call]:
        endpoint = self.upstreams.by_url.get(url)
        return endpoint.calls if endpoint else []

    def open_calls(self) -> list[Call]:
        return [c for e in self.upstreams.by_url.values() for c in e.calls if c._callback is not None]

    def in_flight(self, version: str = "v1") -> int:
        return self.plane.version_state("m", version).runtime.limiter.in_flight


def test_admitted_sent_and_answered_with_the_gateways_headers():
    w = World({"v1": ([A], {})})
    r = w.request()
    (call,) = w.calls(A)
    assert (
        call.target == b"/v2/models/m/versions/v1/infer"
        and call.extra_head == b"x-meshgate-timeout-ms: 30000\r\n"
    )
    assert w.in_flight() == 1
    call.answer(200, b'{"ok":1}')
    assert (r.status, r.answers[0][2], r.header(b"x-meshgate-version")) == (200, b'{"ok":1}', b"v1")
    assert w.in_flight() == 0 and w.completed == [(200, None)]


def test_queued_then_resumed_when_the_running_request_ends():
    w = World({"v1": ([A], {"limits": {"max_in_flight": 1, "max_queued": 4}})})
    first, second = w.request(), w.request()
    assert len(w.calls(A)) == 1  # the second waits for the slot
    w.calls(A)[0].answer()
    assert len(w.calls(A)) == 2 and w.in_flight() == 1
    w.calls(A)[1].answer()
    assert (first.status, second.status, w.in_flight()) == (200, 200, 0)
    assert w.timers.live() == []  # the queue deadline timer was cancelled


def test_queued_until_the_deadline_answers_504_and_leaves_the_queue():
    w = World({"v1": ([A], {"limits": {"max_in_flight": 1, "max_queued": 4}})})
    w.request()
    late = w.request([(b"x-meshgate-timeout-ms", b"50")])
    w.timers.advance(0.05)
    assert late.status == 504 and late.header(b"x-meshgate-error") == b"deadline_exceeded"
    assert b"while queued" in late.answers[0][2]
    assert w.plane.version_state("m", "v1").runtime.limiter.queued == 0
    w.calls(A)[0].answer()
    assert len(w.calls(A)) == 1 and w.in_flight() == 0


def test_a_raised_max_in_flight_resumes_the_waiters_it_admits():
    w = World({"v1": ([A], {"limits": {"max_in_flight": 1, "max_queued": 4}})})
    running, a, b = w.request(), w.request(), w.request()
    assert len(w.calls(A)) == 1
    w.set({"v1": ([A], {"limits": {"max_in_flight": 3, "max_queued": 4}})}, config_version=2)
    assert len(w.calls(A)) == 3 and w.in_flight() == 3  # resumed at the swap, not at their deadline
    for call in w.calls(A):
        call.answer()
    assert [r.status for r in (running, a, b)] == [200, 200, 200] and w.in_flight() == 0
    assert w.timers.live() == []


def test_an_open_breaker_falls_back_and_says_so():
    w = World({"v1": ([A], {"circuit_breaker": {"min_calls": 1}}), "v2": ([B], {})}, fallback={"v1": ("v2",)})
    first = w.request()
    w.calls(A)[0].answer(503, b"busy")  # opens the breaker: no retry on v1, the fallback instead
    (call,) = w.open_calls()
    assert call.url == B and call.target == b"/v2/models/m/versions/v2/infer"
    call.answer()
    assert first.status == 200 and first.header(b"x-meshgate-fallback") == b"1"
    second = w.request()
    assert len(w.calls(A)) == 1  # v1 is not asked while its breaker is open
    w.calls(B)[-1].answer()
    assert second.status == 200 and second.header(b"x-meshgate-fallback") == b"1"
    assert second.header(b"x-meshgate-version") == b"v2"
    assert w.in_flight("v1") == 0 and w.in_flight("v2") == 0


def test_a_refused_connection_is_retried_on_the_other_endpoint_after_the_backoff():
    w = World({"v1": ([A, B], {"load_balancer": "round-robin"})})
    r = w.request()
    (first,) = w.open_calls()
    first.fail("upstream_unreachable", "cannot connect")
    assert w.open_calls() == [] and len(w.timers.live()) == 1  # backing off
    w.timers.advance(0.025)
    (second,) = w.open_calls()
    assert second.url != first.url
    second.answer()
    assert r.status == 200 and w.plane.stats.retries == 1 and w.in_flight() == 0


def test_an_exhausted_budget_answers_why():
    w = World({"v1": ([A, B], {"retries": {"budget": {"ratio": 0.0, "min_per_second": 0.0}}})})
    r = w.request()
    w.open_calls()[0].fail("upstream_unreachable", "cannot connect")
    assert r.status == 503 and r.header(b"x-meshgate-error") == b"retry_budget_exhausted"
    assert w.plane.stats.budget_exhausted == 1 and w.completed == [(503, "retry_budget_exhausted")]


def test_a_per_try_timeout_is_retried_and_the_deadline_ends_it():
    w = World({"v1": ([A, B], {"timeouts": {"request_ms": 1000, "per_try_ms": 300}})})
    r = w.request()
    (first,) = w.open_calls()
    assert first.timeout == pytest.approx(0.3) and first.extra_head == b"x-meshgate-timeout-ms: 300\r\n"
    w.clock.advance(0.3)
    first.fail("upstream_timeout", "no response in time")
    w.timers.advance(0.5)  # the backoff, and more
    (second,) = w.open_calls()
    assert second.timeout == pytest.approx(0.2)  # what is left of the deadline
    w.clock.advance(0.2)
    second.fail("upstream_timeout", "no response in time")
    assert r.status == 504 and r.header(b"x-meshgate-error") == b"deadline_exceeded"
    assert w.in_flight() == 0


def test_no_healthy_endpoint_answers_503_with_when_to_come_back():
    w = World({"v1": ([A], {"outlier": {"consecutive_failures": 1}})})
    first = w.request()
    w.calls(A)[0].fail("upstream_reset", "reset")  # ejected
    w.timers.advance(0.025)  # the retry finds no endpoint
    assert first.status == 503 and first.header(b"x-meshgate-error") == b"no_healthy_endpoint"
    assert first.header(b"retry-after") == b"30"


def test_the_client_hanging_up_cancels_the_call_and_frees_the_slot():
    w = World({"v1": ([A], {"limits": {"max_in_flight": 1, "max_queued": 4}})})
    gone, queued = w.request(), w.request()
    queued.hang_up()
    assert w.plane.version_state("m", "v1").runtime.limiter.queued == 0
    gone.hang_up()
    assert w.calls(A)[0].cancelled and w.in_flight() == 0 and w.timers.live() == []
    assert w.completed == [(499, "client_closed"), (499, "client_closed")]
    assert gone.answers == [] and queued.answers == []


def test_the_models_failed_answer_is_passed_through_marked():
    w = World({"v1": ([A], {})})
    r = w.request()
    w.calls(A)[0].answer(500, b"boom")
    assert (r.status, r.answers[0][2], r.header(b"x-meshgate-error")) == (500, b"boom", b"upstream_5xx")


def test_a_429_with_retry_after_goes_to_the_other_endpoint():
    w = World({"v1": ([A, B], {"load_balancer": "round-robin"})})
    r = w.request()
    (first,) = w.open_calls()
    first.answer(429, b"slow down", [(b"retry-after", b"2")])
    w.timers.advance(0.0)
    (second,) = w.open_calls()
    assert second.url != first.url
    second.answer()
    assert r.status == 200 and w.in_flight() == 0


def test_a_429_with_nowhere_else_to_go_is_passed_through_with_its_retry_after():
    w = World({"v1": ([A], {})})
    r = w.request()
    w.calls(A)[0].answer(429, b"slow down", [(b"retry-after", b"2")])
    assert (r.status, r.header(b"retry-after"), r.header(b"x-meshgate-error")) == (
        429,
        b"2",
        b"upstream_rate_limited",
    )
