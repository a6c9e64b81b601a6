"""Per-key rate limits: requests and tokens per minute over a sliding window (pure, no I/O).

The window is the sliding-window counter (Cloudflare's, also Envoy's and Kong's): the count of
the current minute plus the previous minute's count weighted by the share of it still inside
the last 60 s, ``estimate = prev * (1 - f) + cur`` with ``f`` the elapsed part of the current
minute. It smooths the 2x burst a fixed minute allows at its boundary, and it is made of plain
additive counters, so any number of gateways can add theirs up in a shared store.

A :class:`Meter` is one key's accounting on one gateway, in one of two modes:

* **exact** (one process holds every count: the embedded SQLite or memory store): a request is
  admitted while ``estimate + 1 <= rpm``; nothing is shared.
* **shared** (several gateways on one Redis): requests are admitted against a *lease*, a number
  of requests the store granted this gateway for the current minute. The store never grants
  more than ``rpm - prev * (1 - f) - reserved`` (``reserved``: every lease granted so far this
  minute, used or not), so leases alone never exceed the limit. Two exceptions are bounded: a
  gateway that has not synced the key yet this minute admits **one** request without a lease
  (a key's first request is not refused while its lease is fetched), and a gateway whose sync
  failed (store down) falls back to exact mode against the full limit until a sync succeeds.
  Hence, while the store is up: requests per sliding minute <= rpm + G for G gateways.

Tokens are known only after the answer: ``record`` adds them and a request is admitted while the
token estimate is below ``tpm``, so one large answer may take the budget below zero and block
later requests until the window slides past it, as OpenAI's limits do. In shared mode a gateway
sees other gateways' tokens up to one sync interval (plus a store round trip) late.

Time is injected (``now``, wall-clock seconds: windows are aligned to the minute on every
gateway, so their clocks must agree, as NTP keeps them). The store side of a sync lives in
``gateway.clientkeys.sync``; this module only says what to send and how to read the answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["WINDOW_S", "Flush", "Limits", "Meter", "Verdict", "go_duration", "window_of"]

WINDOW_S = 60.0


def window_of(now: float) -> tuple[int, float]:
    """The minute index of ``now`` and the elapsed fraction of it, in [0, 1)."""
    index = math.floor(now / WINDOW_S)
    return index, now / WINDOW_S - index


def go_duration(seconds: float) -> str:
    """A duration as OpenAI's ``x-ratelimit-reset-*`` headers write it: ``20ms``, ``1.5s``, ``6m0s``."""
    seconds = max(0.0, seconds)
    if seconds < 1.0:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(round(seconds, 3), 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def _wait(prev: float, cur: float, f: float, budget: float) -> float:
    """Seconds until ``prev * (1 - f) + cur`` falls to ``budget`` or below as time slides
    (``inf`` when it never does: a budget below zero)."""
    if budget < 0:
        return math.inf
    if cur <= budget:  # within this minute, once enough of the previous one slid out
        if prev <= 0 or prev * (1 - f) + cur <= budget:
            return 0.0
        return ((1 - (budget - cur) / prev) - f) * WINDOW_S
    if cur <= 0:
        return math.inf  # unreachable: cur > budget >= 0
    # next minute: the current count becomes the previous one and decays
    return ((1 - f) + (1 - budget / cur)) * WINDOW_S


def _reset(prev: float, cur: float, f: float) -> float:
    """Seconds until the window holds nothing again (OpenAI: until the limit is back at its
    initial state)."""
    if cur > 0:
        return (2 - f) * WINDOW_S
    return (1 - f) * WINDOW_S if prev > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Limits:
    """A key's limits; ``None`` is unlimited."""

    rpm: int | None = None
    tpm: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"{name} must be a whole number >= 1 or unset, got {value!r}")


class Verdict(NamedTuple):
    """One admission decision with what OpenAI's ``x-ratelimit-*`` headers report."""

    admitted: bool
    #: "requests" or "tokens": the limit that refused (None when admitted)
    limit: str | None
    retry_after_s: float
    limit_requests: int | None
    remaining_requests: int | None
    reset_requests_s: float
    limit_tokens: int | None
    remaining_tokens: int | None
    reset_tokens_s: float


class Flush(NamedTuple):
    """What one sync sends for a key: counts per minute not yet in the store, and the lease
    change for the current minute (``want`` more, ``give_back`` returned)."""

    counts: dict[int, tuple[int, int, int]]  # minute -> (requests, unleased requests, tokens)
    window: int
    want: int
    give_back: int


class Meter:
    """One key's counts and lease on one gateway (see the module docstring)."""

    __slots__ = (
        "_demand",
        "_pending",
        "_unleased_used",
        "cur",
        "degraded",
        "lease",
        "limits",
        "prev",
        "shared",
        "synced",
        "window",
    )

    def __init__(self, limits: Limits, *, shared: bool, now: float) -> None:
        self.limits = limits
        self.shared = shared
        self.window = window_of(now)[0]
        #: best known totals of every gateway, this minute and the one before: [requests, tokens]
        self.cur = [0, 0]
        self.prev = [0, 0]
        self.lease = 0  # requests this gateway may still admit this minute (shared mode)
        self.synced = False  # a sync has settled this minute (shared mode)
        self.degraded = False  # the last sync failed: exact mode against the full limit
        self._unleased_used = False
        self._demand = 0  # requests asked for since the last sync (sizes the next lease)
        self._pending: dict[int, list[int]] = {}  # minute -> [requests, unleased, tokens] unsent

    def __repr__(self) -> str:
        return f"Meter(window={self.window}, cur={self.cur}, prev={self.prev}, lease={self.lease})"

    def _roll(self, now: float) -> float:
        index, f = window_of(now)
        if index != self.window:
            self.prev = self.cur if index == self.window + 1 else [0, 0]
            self.cur = [0, 0]
            self.window = index
            self.lease = 0  # a lease is a reservation in its own minute
            self.synced = False
            self._unleased_used = False
        return f

    def _estimates(self, f: float) -> tuple[float, float]:
        return self.prev[0] * (1 - f) + self.cur[0], self.prev[1] * (1 - f) + self.cur[1]

    def admit(self, now: float, sync_s: float = 0.0) -> Verdict:
        """Admit one request or say which limit refuses it and for how long.

        ``sync_s`` is the shared mode's sync interval: a gateway out of lease while the
        window still has room asks the caller to retry after about one sync."""
        f = self._roll(now)
        rpm, tpm = self.limits.rpm, self.limits.tpm
        req_est, tok_est = self._estimates(f)
        self._demand += 1
        req_ok, unleased, req_wait = True, False, 0.0
        if rpm is not None:
            if not self.shared or self.degraded:
                req_ok, unleased = req_est + 1 <= rpm, self.shared
            elif self.lease > 0:
                req_ok = True
            elif not self.synced and not self._unleased_used:
                req_ok = unleased = True
            else:
                req_ok = False
            if not req_ok:
                req_wait = _wait(self.prev[0], self.cur[0], f, rpm - 1)
                req_wait = max(req_wait, sync_s) if self.shared and not self.degraded else req_wait
        tok_ok = tpm is None or tok_est < tpm
        tok_wait = 0.0 if tok_ok else _wait(self.prev[1], self.cur[1], f, tpm - 1)
        admitted = req_ok and tok_ok
        if admitted:
            self.cur[0] += 1
            counts = self._pending.setdefault(self.window, [0, 0, 0])
            counts[0] += 1
            if unleased:
                counts[1] += 1
                if not self.degraded:
                    self._unleased_used = True
            elif rpm is not None and self.shared:
                self.lease -= 1
            req_est += 1
        limit = None if admitted else ("requests" if not req_ok else "tokens")
        return Verdict(
            admitted,
            limit,
            0.0 if admitted else max(req_wait, tok_wait),
            rpm,
            None if rpm is None else max(0, math.floor(rpm - req_est)),
            _reset(self.prev[0], self.cur[0], f),
            tpm,
            None if tpm is None else max(0, math.floor(tpm - tok_est)),
            _reset(self.prev[1], self.cur[1], f),
        )

    def record(self, tokens: int, now: float) -> None:
        """Count the tokens of an answer (prompt + completion) in the current minute."""
        if tokens <= 0:
            return
        self._roll(now)
        self.cur[1] += tokens
        self._pending.setdefault(self.window, [0, 0, 0])[2] += tokens

    # -- the sync protocol (shared mode; exact mode only publishes its counts) ------------
    def begin_sync(self, now: float) -> Flush:
        """Take what the store has not seen yet; returns a lease beyond what the recent demand
        needs at once (it can no longer be used), and asks for a top-up to twice that demand."""
        self._roll(now)
        counts = {w: (c[0], c[1], c[2]) for w, c in self._pending.items() if any(c)}
        self._pending = {}
        want = give_back = 0
        if self.shared and self.limits.rpm is not None:
            target = min(self.limits.rpm, max(1, 2 * self._demand))
            if self.lease > target:
                give_back, self.lease = self.lease - target, target
            else:
                want = target - self.lease
        self._demand = 0
        return Flush(counts, self.window, want, give_back)

    def grant(self, flush: Flush, reserved_after: int, prev_requests: int, now: float) -> int:
        """How much of ``flush.want`` the store's answer allows: ``reserved_after`` is the
        minute's reservations right after this sync added ``want``; the rest must go back."""
        rpm = self.limits.rpm
        if rpm is None or flush.want <= 0:
            return 0
        f = window_of(now)[1] if window_of(now)[0] == flush.window else 1.0
        room = rpm - prev_requests * (1 - f) - (reserved_after - flush.want)
        return max(0, min(flush.want, math.floor(room)))

    def settle(
        self, flush: Flush, granted: int, totals: tuple[int, int], prev_totals: tuple[int, int], now: float
    ) -> None:
        """Take in a successful sync: the store's totals (which include ``flush``) plus what
        was counted here meanwhile, and the granted lease if the minute has not moved on."""
        self._roll(now)
        self.degraded = False
        if self.window != flush.window:
            return  # the answer is about a minute that is over: the next sync sees the new one
        late = self._pending.get(self.window, (0, 0, 0))
        self.cur = [totals[0] + late[0], totals[1] + late[2]]
        self.prev = [prev_totals[0], prev_totals[1]]
        self.lease += granted
        self.synced = True

    def sync_failed(self, flush: Flush) -> None:
        """Put the unsent counts back (the next sync sends them) and fall back to exact mode."""
        for w, (req, unleased, tok) in flush.counts.items():
            counts = self._pending.setdefault(w, [0, 0, 0])
            counts[0] += req
            counts[1] += unleased
            counts[2] += tok
        if flush.give_back and flush.window == self.window:
            # the store still holds it as reserved: keep it reserved here too (usable again)
            self.lease += flush.give_back
        self.degraded = self.shared
