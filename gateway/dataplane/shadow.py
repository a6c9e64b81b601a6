"""Shadow traffic: a copy of the request to another version, never waited for, outputs compared.

The copy leaves beside the primary attempt, goes through the shadow version's own
resilience runtime (breaker, balancer, ejection; one attempt, no retries, no fallback) and
its answer is only recorded. When both answers are in, the Open Inference Protocol outputs
are compared (``models.compare``: exact for integers, max |diff| for floats) off the
client's path, giving an agreement rate per (model, primary, shadow) -- how a team learns
whether a new model agrees with the old one before it takes real traffic.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.dataplane.exchange import error_outcome
from gateway.http import UpstreamError, UpstreamResponse
from models.compare import compare
from models.oip_grpc import response_document
from router.retry import classify_status

if TYPE_CHECKING:
    from gateway.dataplane.plane import DataPlane
    from router.table import ModelRoute

__all__ = ["ShadowCopy", "ShadowStats"]


@dataclass(slots=True)
class ShadowStats:
    """What the shadow of one (model, primary version) pair has shown so far."""

    shadow_version: str
    sent: int = 0
    skipped: int = 0  # not sent: the shadow's breaker was open, it was overloaded or had no endpoint
    errors: int = 0
    compared: int = 0
    agreed: int = 0
    max_abs_diff: float = 0.0
    latency_sum_s: float = 0.0
    last_disagreement: str | None = None

    def to_dict(self) -> dict[str, Any]:
        done = self.sent - self.errors
        return {
            "shadow_version": self.shadow_version,
            "sent": self.sent,
            "skipped": self.skipped,
            "errors": self.errors,
            "compared": self.compared,
            "agreed": self.agreed,
            "agreement_rate": self.agreed / self.compared if self.compared else None,
            "max_abs_diff": self.max_abs_diff,
            "mean_latency_ms": 1000 * self.latency_sum_s / done if done > 0 else None,
            "last_disagreement": self.last_disagreement,
        }


class ShadowCopy:
    """One mirrored request; joins the primary's answer to compare outputs."""

    __slots__ = ("_primary", "_shadow", "_stats", "done")

    def __init__(self, stats: ShadowStats) -> None:
        self._stats = stats
        self._primary: UpstreamResponse | bool | None = False  # False: not in yet
        self._shadow: UpstreamResponse | bool | None = False
        self.done = False

    @classmethod
    def start(
        cls,
        plane: DataPlane,
        model: ModelRoute,
        version: str,
        shadow: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeout: float,
    ) -> ShadowCopy | None:
        """Send the copy now; None when the shadow cannot take it (counted as skipped)."""
        stats = plane.shadow_stats(model.name, version, shadow)
        vr = model.versions[shadow]
        rt = plane.runtime(model.name, vr)
        if rt.admit() is not None:
            stats.skipped += 1
            return None
        ep = rt.pick(())
        if ep is None:
            rt.release()
            stats.skipped += 1
            return None
        copy = cls(stats)
        stats.sent += 1
        rt.begin(ep)
        now = plane.now
        t0 = now()

        def done(response: UpstreamResponse | None, error: UpstreamError | None) -> None:
            latency = now() - t0
            outcome = classify_status(response.status) if response is not None else error_outcome(error)
            rt.finish(ep, outcome, latency)
            waiter = rt.release()
            if waiter is not None:
                waiter.resume()
            if response is None or response.status != 200:
                stats.errors += 1
                response = None
            else:
                stats.latency_sum_s += latency
            copy._arrive(shadow=response)

        shadow_target = target.replace(
            f"/versions/{version}/".encode(), f"/versions/{vr.version}/".encode(), 1
        )
        plane.upstreams.endpoint(vr, ep).send(b"POST", shadow_target, headers, body, timeout, done)
        return copy

    def primary_done(self, response: UpstreamResponse | None) -> None:
        ok = response is not None and response.status == 200 and response.stream is None
        self._arrive(primary=response if ok else None)

    def _arrive(self, *, primary: Any = False, shadow: Any = False) -> None:
        if primary is not False:
            self._primary = primary
        if shadow is not False:
            self._shadow = shadow
        if self._primary is False or self._shadow is False or self.done:
            return
        self.done = True
        if self._primary is not None and self._shadow is not None:
            asyncio.get_running_loop().call_soon(self._compare)

    def _compare(self) -> None:
        """Parse and compare both bodies (after the client has its answer)."""
        stats = self._stats
        grpc = any(name == b"grpc-status" for name, _ in self._primary.headers)  # a v2-grpc version's
        parse = response_document if grpc else json.loads
        try:
            result = compare(parse(self._primary.body), parse(self._shadow.body))
        except ValueError:  # OipError is one
            stats.compared += 1
            stats.last_disagreement = f"a response body is not {'a ModelInferResponse' if grpc else 'JSON'}"
            return
        stats.compared += 1
        if result.agree:
            stats.agreed += 1
        else:
            stats.last_disagreement = result.reason
        if result.max_abs_diff is not None:
            stats.max_abs_diff = max(stats.max_abs_diff, result.max_abs_diff)
