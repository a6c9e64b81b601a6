"""Endpoint choice within a version: power of two choices over peak EWMA, or round robin.

Peak EWMA (Finagle/Linkerd, as in tower's `PeakEwma`): each endpoint keeps a latency
estimate that jumps up at once to a slower observation and otherwise decays towards new
observations with time constant `decay_s` (default 10 s, Linkerd's); reading it for a
choice decays it towards zero, so an idle endpoint gets tried again. An endpoint's load is
``estimate x (in_flight + 1)``; a never-measured endpoint costs 0 while idle (so it is tried
at once) and a large penalty plus its in-flight count while busy (so traffic does not pile
onto an unknown). P2C draws two distinct available endpoints at random and takes the
cheaper.

Failures are observed like successes, with their real latency (as Linkerd and Envoy do):
an endpoint that fails fast looks fast until outlier ejection takes it out after
`consecutive_failures`, which keeps ejection prompt and predictable.

Endpoints are addressed by index; their `EndpointLoad` objects can be handed to a new
balancer when the route table is rebuilt, so estimates survive. `available(i, now)` (the
outlier detector's check) filters them. `pick(exclude)` avoids the given indices when
another endpoint is available (a retry goes elsewhere) and returns None only when no
endpoint is available at all.
The RNG is a field, so tests are deterministic.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection, Sequence

__all__ = [
    "DECAY_S",
    "Balancer",
    "EndpointLoad",
    "P2CEwmaBalancer",
    "RoundRobinBalancer",
    "make_balancer",
]

DECAY_S = 10.0
_UNMEASURED_PENALTY = 1e6  # seconds-equivalent; Finagle's "Penalty"

Available = Callable[[int, float], bool]


class EndpointLoad:
    """Latency estimate and in-flight count of one endpoint (shared across rebuilds)."""

    __slots__ = ("cost", "in_flight", "key", "measured", "stamp")

    def __init__(self, key: str) -> None:
        self.key = key
        self.cost = 0.0  # seconds, as of `stamp`
        self.stamp = 0.0
        self.measured = False
        self.in_flight = 0


class Balancer:
    """Shared bookkeeping; subclasses choose. Call `begin(i)` when an attempt is sent and
    exactly one of `finish(i, latency_s)` / `cancel(i)` when it ends."""

    __slots__ = ("_available", "_cursor", "_decay_s", "_eps", "_now", "rng")

    def __init__(
        self,
        endpoints: Sequence[str | EndpointLoad],
        available: Available,
        now: Callable[[], float],
        rng: random.Random,
        decay_s: float = DECAY_S,
    ) -> None:
        self._eps = [e if isinstance(e, EndpointLoad) else EndpointLoad(e) for e in endpoints]
        self._available = available
        self._now = now
        self.rng = rng
        self._decay_s = decay_s
        self._cursor = 0  # round robin's next position

    @property
    def endpoints(self) -> list[EndpointLoad]:
        return self._eps

    def pick(self, exclude: Collection[int] = (), now: float | None = None) -> int | None:
        """An available endpoint not in `exclude` (`now`: the caller's reading of the clock)."""
        raise NotImplementedError

    def begin(self, i: int) -> None:
        self._eps[i].in_flight += 1

    def cancel(self, i: int) -> None:
        """The attempt ended without a verdict on the endpoint (the client went away)."""
        self._eps[i].in_flight -= 1

    def finish(self, i: int, latency_s: float, now: float | None = None) -> None:
        """The attempt on `i` ended after `latency_s` (`now`: the caller's reading of the
        balancer's clock, if it has one)."""
        e = self._eps[i]
        e.in_flight -= 1
        if now is None:
            now = self._now()
        if not e.measured:
            e.cost = latency_s
            e.measured = True
        elif latency_s > e.cost:
            e.cost = latency_s  # peak: slow news counts at once
        else:
            w = math.exp((e.stamp - now) / self._decay_s)
            e.cost = e.cost * w + latency_s * (1.0 - w)
        e.stamp = now

    def snapshot(self, i: int) -> dict[str, object]:
        e = self._eps[i]
        ewma = e.cost * math.exp((e.stamp - self._now()) / self._decay_s) if e.measured else None
        return {"ewma_ms": None if ewma is None else ewma * 1000.0, "in_flight": e.in_flight}

    def _candidates(self, exclude: Collection[int], now: float) -> list[int]:
        """Available endpoints not excluded; if none, any available (retry in place)."""
        ok = self._available
        found = [i for i in range(len(self._eps)) if i not in exclude and ok(i, now)]
        return found or [i for i in range(len(self._eps)) if ok(i, now)]


class P2CEwmaBalancer(Balancer):
    """Power of two choices over peak-EWMA load (the default)."""

    __slots__ = ()

    def pick(self, exclude: Collection[int] = (), now: float | None = None) -> int | None:
        eps = self._eps
        n = len(eps)
        if now is None:
            now = self._now()
        if n == 1:  # the only endpoint, excluded or not (a retry in place), if available
            return 0 if self._available(0, now) else None
        rand = self.rng.random
        if n >= 2:  # fast path: both random draws usable
            a = int(rand() * n)
            b = int(rand() * (n - 1))
            if b >= a:
                b += 1
            ok = self._available
            if (not exclude or (a not in exclude and b not in exclude)) and ok(a, now) and ok(b, now):
                return a if self._load(eps[a], now) <= self._load(eps[b], now) else b
        cands = self._candidates(exclude, now)
        if len(cands) <= 1:
            return cands[0] if cands else None
        m = len(cands)
        ia = int(rand() * m)
        ib = int(rand() * (m - 1))
        if ib >= ia:
            ib += 1
        a, b = cands[ia], cands[ib]
        return a if self._load(eps[a], now) <= self._load(eps[b], now) else b

    def _load(self, e: EndpointLoad, now: float) -> float:
        if not e.measured:
            return _UNMEASURED_PENALTY + e.in_flight if e.in_flight else 0.0
        if e.stamp != now:  # reading decays (tower's PeakEwma)
            e.cost *= math.exp((e.stamp - now) / self._decay_s)
            e.stamp = now
        return e.cost * (e.in_flight + 1)


class RoundRobinBalancer(Balancer):
    """Each available endpoint in turn."""

    __slots__ = ()

    def pick(self, exclude: Collection[int] = (), now: float | None = None) -> int | None:
        n = len(self._eps)
        if now is None:
            now = self._now()
        ok = self._available
        for step in range(n):
            i = (self._cursor + step) % n
            if i not in exclude and ok(i, now):
                self._cursor = i + 1
                return i
        cands = self._candidates((), now)
        if not cands:
            return None
        self._cursor = cands[0] + 1
        return cands[0]


def make_balancer(
    kind: str,
    endpoints: Sequence[str | EndpointLoad],
    available: Available,
    now: Callable[[], float],
    rng: random.Random,
) -> Balancer:
    """The balancer named by the policy's `load_balancer` ("p2c-ewma" or "round-robin");
    pass `EndpointLoad` objects of a previous balancer to carry their state over."""
    cls = {"p2c-ewma": P2CEwmaBalancer, "round-robin": RoundRobinBalancer}[kind]
    return cls(endpoints, available, now, rng)
