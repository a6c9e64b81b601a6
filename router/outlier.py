"""Per-endpoint outlier ejection (Envoy semantics) and active health-check state.

- Consecutive failures: `consecutive_failures` (5) failed attempts in a row eject the
  endpoint for ``base_ejection_s x n`` seconds, n being its ejection multiplier (1 the first
  time, +1 per ejection), capped at `max_ejection_s`. The multiplier decays by one for every
  `interval_s` the endpoint spends un-ejected, as in Envoy.
- Cap: a new ejection is refused (counted in `overflow`) when it would take the ejected
  share above `max_ejection_percent`, except that one endpoint can always be ejected
  (Envoy: ``100 x (ejected + 1) / n <= max_percent or ejected == 0``). So 10% of 3
  endpoints still lets one go; with one endpoint, that endpoint can go and the version has
  no healthy endpoint (the data plane then falls back).
- Un-ejection is exact and lazy: an endpoint is available again as soon as
  ``now >= ejected_until`` (Envoy waits for its next interval tick); its consecutive-failure
  count starts from zero again.
- Success rate (optional): every `interval_s`, among endpoints with at least
  `request_volume` attempts in the interval, if there are at least `min_hosts`, those whose
  success rate is below ``mean - stdev_factor x stdev`` (population stdev) are ejected.
- Active health checks: `health_check(i, ok)`; `unhealthy_threshold` consecutive failed
  checks take an endpoint out, `healthy_threshold` consecutive passes bring it back. This is
  independent of ejection (a passing readiness check does not cut an ejection short: a model
  can be "ready" and still fail every inference).

Per-endpoint state lives in `EndpointHealth` objects; pass them to the next detector for
endpoints that stay when the route table is rebuilt, so nothing is forgotten.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from router.policy import HealthCheckPolicy, OutlierPolicy

__all__ = ["EndpointHealth", "OutlierDetector"]


class EndpointHealth:
    """Everything the detector knows about one endpoint."""

    __slots__ = (
        "consecutive",
        "ejected_until",
        "ejections",
        "hc_fails",
        "hc_ok",
        "hc_passes",
        "key",
        "reason",
        "released_at",
        "sr_requests",
        "sr_successes",
    )

    def __init__(self, key: str) -> None:
        self.key = key
        self.consecutive = 0
        self.ejected_until = 0.0  # > now while ejected
        self.ejections = 0  # the ejection-time multiplier
        self.released_at: float | None = None  # when the last ejection ended
        self.reason = ""  # why it was last ejected
        self.sr_requests = 0
        self.sr_successes = 0
        self.hc_ok = True
        self.hc_passes = 0
        self.hc_fails = 0


class OutlierDetector:
    """Outlier ejection over one version's endpoints, addressed by index."""

    __slots__ = ("_cfg", "_eps", "_hc", "_next_eval", "_now", "overflow")

    def __init__(
        self,
        endpoints: Sequence[str | EndpointHealth],
        policy: OutlierPolicy,
        now: Callable[[], float],
        health_check: HealthCheckPolicy | None = None,
    ) -> None:
        self._eps = [e if isinstance(e, EndpointHealth) else EndpointHealth(e) for e in endpoints]
        self._cfg = policy
        self._hc = health_check
        self._now = now
        self._next_eval = now() + policy.interval_s
        self.overflow = 0  # ejections refused by max_ejection_percent

    @property
    def endpoints(self) -> list[EndpointHealth]:
        return self._eps

    def available(self, i: int, now: float) -> bool:
        """May endpoint `i` take traffic at time `now`? (The balancer's hot check.)"""
        h = self._eps[i]
        return h.hc_ok and h.ejected_until <= now

    def available_count(self) -> int:
        now = self._now()
        return sum(1 for h in self._eps if h.hc_ok and h.ejected_until <= now)

    def record(self, i: int, failed: bool) -> None:
        """One attempt's verdict for endpoint `i`."""
        h = self._eps[i]
        cfg = self._cfg
        # the clock is read only where it matters: a healthy success needs no time
        if h.ejected_until and h.ejected_until <= self._now():
            self._release(h)
        h.sr_requests += 1
        if failed:
            h.consecutive += 1
            if h.consecutive >= cfg.consecutive_failures and not h.ejected_until:
                self._try_eject(h, self._now(), f"{h.consecutive} consecutive failures")
        else:
            h.sr_successes += 1
            h.consecutive = 0
        if cfg.success_rate is not None:
            now = self._now()
            if now >= self._next_eval:
                self._evaluate_success_rate(now)

    def health_check(self, i: int, ok: bool) -> bool:
        """Feed one active health-check result; returns whether the endpoint is now healthy."""
        h = self._eps[i]
        hc = self._hc or HealthCheckPolicy()
        if ok:
            h.hc_fails = 0
            h.hc_passes += 1
            if not h.hc_ok and h.hc_passes >= hc.healthy_threshold:
                h.hc_ok = True
        else:
            h.hc_passes = 0
            h.hc_fails += 1
            if h.hc_ok and h.hc_fails >= hc.unhealthy_threshold:
                h.hc_ok = False
        return h.hc_ok

    def snapshot(self, i: int) -> dict[str, object]:
        h = self._eps[i]
        now = self._now()
        ejected = h.ejected_until > now
        out: dict[str, object] = {
            "endpoint": h.key,
            "ejected": ejected,
            "ejected_for_s": h.ejected_until - now if ejected else 0.0,
            "ejection_reason": h.reason if ejected else None,
            "ejection_multiplier": h.ejections,
            "consecutive_failures": h.consecutive,
        }
        if self._hc is not None:
            out["health_check"] = "healthy" if h.hc_ok else "unhealthy"
        return out

    def _release(self, h: EndpointHealth) -> None:
        h.released_at = h.ejected_until
        h.ejected_until = 0.0
        h.consecutive = 0

    def _try_eject(self, h: EndpointHealth, now: float, reason: str) -> bool:
        cfg = self._cfg
        if h.ejected_until and h.ejected_until <= now:
            self._release(h)
        ejected = sum(1 for e in self._eps if e.ejected_until > now)
        if ejected and 100.0 * (ejected + 1) / len(self._eps) > cfg.max_ejection_percent:
            self.overflow += 1
            return False
        if h.released_at is not None:
            h.ejections = max(0, h.ejections - int((now - h.released_at) // cfg.interval_s))
        h.ejections += 1
        h.ejected_until = now + min(cfg.base_ejection_s * h.ejections, cfg.max_ejection_s)
        h.consecutive = 0
        h.reason = reason
        return True

    def _evaluate_success_rate(self, now: float) -> None:
        sr = self._cfg.success_rate
        assert sr is not None
        self._next_eval = now + self._cfg.interval_s
        volume = [h for h in self._eps if h.sr_requests >= sr.request_volume]
        if len(volume) >= sr.min_hosts:
            rates = [h.sr_successes / h.sr_requests for h in volume]
            mean = sum(rates) / len(rates)
            stdev = math.sqrt(sum((r - mean) ** 2 for r in rates) / len(rates))
            threshold = mean - sr.stdev_factor * stdev
            for h, rate in zip(volume, rates, strict=True):
                if rate < threshold and h.ejected_until <= now:
                    self._try_eject(h, now, f"success rate {rate:.1%} below {threshold:.1%}")
        for h in self._eps:
            h.sr_requests = h.sr_successes = 0
