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
  minute, used or not; ``prev``: the previous minute's reservations, which cover its requests
  before every gateway has reported them), so leases alone never exceed the limit. A lease is
  a reservation in its own minute and lapses when the minute ends (what is left goes back to
  it at the next sync), so within ``ahead_s`` of the end a sync also reserves the **next**
  minute's lease, and the boundary finds it in place: a gateway does not go without a lease
  for the sync interval after each boundary. At that boundary the minute counts whole beside
  the next one's leases, so every grant also keeps ``reserved + next_reserved <= rpm``.
  Two exceptions are bounded: a gateway that has not synced the key yet this minute admits
  **one** request without a lease (a key's first request is not refused while its lease is
  fetched), and a gateway whose sync failed (store down) falls back to exact mode against the
  full limit until a sync succeeds. Hence, while the store is up: requests per sliding minute
  <= rpm + G for G gateways (+ G more for one sync interval after a boundary, from gateways
  whose unleased request of the minute before came in its last sync interval, still unreported).

Tokens are known only after the answer: ``record`` adds them and a request is admitted while
the token budget is above zero, so one large answer may take it below zero and block later
requests until the window slides past it, as OpenAI's limits do. In shared mode tokens are
leased the same way (a request needs a token lease above zero; its answer's tokens come out of
it, and what the lease does not cover is reserved at the next sync), so across gateways
tokens per sliding minute <= tpm + the tokens of the requests admitted while their gateway's
lease was still positive but not yet charged (the answers in flight, as with one OpenAI
process) + the answers of the G unleased requests.

A gateway asks to hold twice its demand of one sync interval, or half its share of the room
left (``(limit - estimate) / (2 G)``, G the gateways that synced the key this minute or the
last) if more, at most a tenth of the limit, and returns what it holds beyond that. The share
is what lets a gateway meet a burst (or a ramp from idle) far under the limit with a lease
in place: following the demand alone, a lease only doubled per sync. Under-admission (room
held in another gateway's unused lease) stays bounded by the others' leases, each at most a
tenth of the limit, and half the room left all together.

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
    """What one sync sends for a key: the counts per minute the store has not seen, and the
    lease changes, for requests and for tokens: in the current minute (``want`` more,
    ``give_back`` returned), in the next one (``want_next``, asked ahead near the minute's end)
    and in the previous one (``lapsed``: what was left of its lease when it ended, returned)."""

    #: minute -> (requests, unleased requests, tokens, unleased tokens)
    counts: dict[int, tuple[int, int, int, int]]
    window: int
    want: tuple[int, int]  # (requests, tokens)
    give_back: tuple[int, int]
    want_next: tuple[int, int] = (0, 0)
    lapsed: tuple[int, int] = (0, 0)
    #: this gateway's first sync of the minute: it counts itself among the key's gateways
    first: bool = False


def _target(limit: int, demand: int, free: float, gateways: int) -> int:
    """The lease a gateway asks to hold: twice its demand of one sync interval, or half its
    share of the room left (``free`` among the ``gateways`` metering the key) if more, so a
    burst far under the limit finds a lease in place however idle the gateway was; at least
    1, at most a tenth of the limit (so one busy gateway does not reserve everyone's minute)."""
    share = math.floor(free / (2 * max(1, gateways)))
    return min(max(1, math.ceil(limit / 10)), max(1, 2 * demand, share))


def _grant(limit: int, want: int, reserved_after: int, prev: int, f: float, next_reserved: int) -> int:
    """This minute's lease: room under the sliding window (``prev``: the previous minute's
    reservations, weighed as it still counts) and under what the next minute already holds
    (at the boundary this minute counts whole beside the next one's leases)."""
    room = limit - max(prev * (1 - f), next_reserved) - (reserved_after - want)
    return max(0, min(want, math.floor(room)))


def _grant_next(limit: int, want: int, reserved: int, next_reserved_after: int) -> int:
    """The next minute's lease, asked ahead: at its start this minute's reservations count whole."""
    room = limit - reserved - (next_reserved_after - want)
    return max(0, min(want, math.floor(room)))


class Meter:
    """One key's counts and leases on one gateway (see the module docstring)."""

    __slots__ = (
        "_counted",
        "_demand",
        "_lapsed",
        "_pending",
        "_unleased_used",
        "cur",
        "degraded",
        "gateways",
        "lease",
        "limits",
        "next_lease",
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
        #: [requests, tokens] this gateway may still use this minute (shared mode); tokens of an
        #: answer beyond the token lease are sent as unleased, for the store to reserve
        self.lease = [0, 0]
        self.next_lease = [0, 0]  # reserved in the next minute: its lease when it starts
        self._lapsed = [0, 0]  # the previous minute's lease left when it ended: to give back
        self.synced = False  # a sync has settled this minute (shared mode)
        self.gateways = 1  # how many gateways meter the key, as the last sync read it
        self._counted: int | None = None  # the minute this gateway counted itself in
        self.degraded = False  # the last sync failed: exact mode against the full limit
        self._unleased_used = False
        self._demand = [0, 0]  # requests asked for, tokens recorded since the last sync
        #: minute -> [requests, unleased requests, tokens, unleased tokens] not yet sent
        self._pending: dict[int, list[int]] = {}

    def __repr__(self) -> str:
        return f"Meter(window={self.window}, cur={self.cur}, prev={self.prev}, lease={self.lease})"

    @property
    def sync_due(self) -> bool:
        """Shared mode, and no sync has settled this minute yet (a new key on this gateway, or
        the minute just began): its lease is what the next sync brings."""
        return self.shared and not self.degraded and not self.synced

    def _roll(self, now: float) -> float:
        index, f = window_of(now)
        if index != self.window:
            follows = index == self.window + 1
            self.prev = self.cur if follows else [0, 0]
            self.cur = [0, 0]
            self.window = index
            # a lease is a reservation in its own minute: what is left lapses (and goes back at
            # the next sync); the one reserved ahead for this minute takes its place
            self._lapsed = [max(0, n) for n in self.lease] if follows else [0, 0]
            self.lease = self.next_lease if follows else [0, 0]
            self.next_lease = [0, 0]
            self.synced = False
            self._unleased_used = False
        return f

    def _counts(self) -> list[int]:
        return self._pending.setdefault(self.window, [0, 0, 0, 0])

    def admit(self, now: float, sync_s: float = 0.0) -> Verdict:
        """Admit one request or say which limit refuses it and for how long.

        ``sync_s`` is the shared mode's sync interval: a gateway out of lease while the
        window still has room asks the caller to retry after about one sync."""
        f = self._roll(now)
        rpm, tpm = self.limits.rpm, self.limits.tpm
        req_est = self.prev[0] * (1 - f) + self.cur[0]
        tok_est = self.prev[1] * (1 - f) + self.cur[1]
        self._demand[0] += 1
        leased = self.shared and not self.degraded
        fresh = leased and not self.synced and not self._unleased_used
        if leased:
            req_ok = rpm is None or self.lease[0] > 0 or fresh
            tok_ok = tpm is None or self.lease[1] > 0 or fresh
        else:
            req_ok = rpm is None or req_est + 1 <= rpm
            tok_ok = tpm is None or tok_est < tpm
        admitted = req_ok and tok_ok
        if admitted:
            self.cur[0] += 1
            req_est += 1
            counts = self._counts()
            counts[0] += 1
            if rpm is not None and self.shared:
                if leased and self.lease[0] > 0:
                    self.lease[0] -= 1
                else:  # the fresh request or a degraded one: the store reserves it when told
                    counts[1] += 1
            if fresh and (
                (rpm is not None and self.lease[0] <= 0) or (tpm is not None and self.lease[1] <= 0)
            ):
                self._unleased_used = True
        waits = [0.0]
        if not req_ok and rpm is not None:
            waits.append(_wait(self.prev[0], self.cur[0], f, rpm - 1))
        if not tok_ok and tpm is not None:
            waits.append(_wait(self.prev[1], self.cur[1], f, tpm - 1))
        if not admitted and leased:
            waits.append(sync_s)  # out of lease: the next sync may bring more
        limit = None if admitted else ("requests" if not req_ok else "tokens")
        return Verdict(
            admitted,
            limit,
            0.0 if admitted else max(waits),
            rpm,
            # the limit that refuses has nothing remaining until retry-after (a lease out in
            # shared mode refuses while the window still has room: the 429 must not say so)
            None if rpm is None else 0 if not req_ok else max(0, math.floor(rpm - req_est)),
            _reset(self.prev[0], self.cur[0], f),
            tpm,
            None if tpm is None else 0 if not tok_ok else max(0, math.floor(tpm - tok_est)),
            _reset(self.prev[1], self.cur[1], f),
        )

    def record(self, tokens: int, now: float) -> None:
        """Count the tokens of an answer (prompt + completion) in the current minute; in shared
        mode they come out of the token lease, and what the lease does not cover is reserved
        by the next sync."""
        if tokens <= 0:
            return
        self._roll(now)
        self.cur[1] += tokens
        self._demand[1] += tokens
        counts = self._counts()
        counts[2] += tokens
        if self.shared and self.limits.tpm is not None:
            covered = 0 if self.degraded else min(tokens, max(self.lease[1], 0))
            self.lease[1] -= covered
            counts[3] += tokens - covered

    # -- the sync protocol (shared mode; exact mode only publishes its counts) ------------
    def begin_sync(self, now: float, ahead_s: float = 0.0) -> Flush:
        """Take what the store has not seen yet; return lease beyond what the recent demand
        needs at once (it can no longer be used), and ask for a top-up to that target; within
        ``ahead_s`` of the minute's end, ask for the next minute's lease too, so that the
        boundary finds one in place."""
        f = self._roll(now)
        counts = {w: (c[0], c[1], c[2], c[3]) for w, c in self._pending.items() if any(c)}
        self._pending = {}
        want, give_back, want_next = [0, 0], [0, 0], [0, 0]
        first = self.shared and self._counted != self.window
        if self.shared:
            self._counted = self.window
            ahead = (1 - f) * WINDOW_S <= ahead_s
            for i, limit in enumerate((self.limits.rpm, self.limits.tpm)):
                if limit is None:
                    continue
                free = limit - (self.prev[i] * (1 - f) + self.cur[i])
                target = _target(limit, self._demand[i], free, self.gateways)
                if self.lease[i] > target:
                    give_back[i], self.lease[i] = self.lease[i] - target, target
                else:
                    want[i] = target - max(self.lease[i], 0)
                if ahead:
                    want_next[i] = max(0, target - self.next_lease[i])
        self._demand = [0, 0]
        lapsed, self._lapsed = self._lapsed, [0, 0]
        return Flush(
            counts,
            self.window,
            (want[0], want[1]),
            (give_back[0], give_back[1]),
            (want_next[0], want_next[1]),
            (lapsed[0], lapsed[1]),
            first,
        )

    def grant(
        self,
        flush: Flush,
        reserved_after: tuple[int, int],
        prev_reserved: tuple[int, int],
        next_reserved_after: tuple[int, int],
        now: float,
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        """How much of ``flush.want`` and ``flush.want_next`` the store's answer allows, as
        (requests, tokens) for this minute and for the next: ``reserved_after`` and
        ``next_reserved_after`` are those minutes' reservations right after this sync added
        its own, ``prev_reserved`` the previous minute's (what was reserved there, or counted
        if more: requests used from a lease may not have been counted yet). The rest must go
        back. Every grant keeps, with the reservations made before it, both
        ``prev * (1 - f) + reserved <= limit`` (the sliding window) and
        ``reserved + next_reserved <= limit`` (the window at the next boundary)."""
        index, f = window_of(now)
        f = f if index == flush.window else 1.0
        this, ahead = [0, 0], [0, 0]
        for i, limit in enumerate((self.limits.rpm, self.limits.tpm)):
            if limit is not None:
                reserved, nxt = reserved_after[i], next_reserved_after[i]
                this[i] = _grant(limit, flush.want[i], reserved, prev_reserved[i], f, nxt)
                ahead[i] = _grant_next(limit, flush.want_next[i], reserved, nxt)
        return (this[0], this[1]), (ahead[0], ahead[1])

    def settle(
        self,
        flush: Flush,
        granted: tuple[tuple[int, int], tuple[int, int]],
        totals: tuple[int, int],
        prev_totals: tuple[int, int],
        now: float,
        gateways: int = 1,
    ) -> None:
        """Take in a successful sync: the store's totals (which include ``flush``) plus what
        was counted here meanwhile, the granted leases (``grant``'s answer) for the minutes
        that have not ended, and how many gateways meter the key (this minute or the last)."""
        self._roll(now)
        self.degraded = False
        self.gateways = max(1, gateways)
        this, ahead = granted
        if self.window == flush.window + 1:
            # the minute ended during the round trip: its grant lapses at once, the one asked
            # ahead is this minute's; the next sync sees the new minute's totals
            self._lapsed = [self._lapsed[0] + this[0], self._lapsed[1] + this[1]]
            self.lease = [self.lease[0] + ahead[0], self.lease[1] + ahead[1]]
        if self.window != flush.window:
            return  # (a later minute: both grants are over and the store lets them expire)
        late = self._pending.get(self.window, (0, 0, 0, 0))
        self.cur = [totals[0] + late[0], totals[1] + late[2]]
        self.prev = [prev_totals[0], prev_totals[1]]
        self.lease = [self.lease[0] + this[0], self.lease[1] + this[1]]
        self.next_lease = [self.next_lease[0] + ahead[0], self.next_lease[1] + ahead[1]]
        self.synced = True

    def sync_failed(self, flush: Flush) -> None:
        """Put the unsent counts back (the next sync sends them) and fall back to exact mode."""
        for w, sent in flush.counts.items():
            counts = self._pending.setdefault(w, [0, 0, 0, 0])
            for i, n in enumerate(sent):
                counts[i] += n
        if flush.window == self.window:
            # the store still holds what was to go back: keep it here too (usable again)
            self.lease = [self.lease[0] + flush.give_back[0], self.lease[1] + flush.give_back[1]]
            self._lapsed = [self._lapsed[0] + flush.lapsed[0], self._lapsed[1] + flush.lapsed[1]]
        self.degraded = self.shared
