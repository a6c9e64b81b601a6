"""The canary loop: about once a second, tick every running canary (``experiments.canary``).

All canary state lives in the store, so a restarted control plane resumes each canary where
it was, and several control planes on one Redis may all run this loop: the optimistic
transaction in ``ExperimentsService.tick_canaries`` lets exactly one of them move a step.
The clock is injected (wall time by default: step start times are persisted and must mean
the same thing after a restart or on another machine).

The candidate's breaker comes from the co-located data plane's health view (``health``,
the function behind ``GET /v1/models/{model}/health``), read on the event loop that owns
that state; a control plane without a data plane has no view and the check is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from experiments.experiment import Experiment
from gateway.control.experiments_service import BreakerProbe, ExperimentsService
from gateway.store import StoreUnavailable

if TYPE_CHECKING:
    from gateway.control.app import ControlPlane

__all__ = ["CanaryLoop", "HealthView", "breaker_states", "run_canary_loop"]

log = logging.getLogger("meshgate.canary")

#: model -> the data plane's health view of it (None: not routed here).
HealthView = Callable[[str], Mapping[str, Any] | None]


def _version_view(view: Mapping[str, Any], version: str) -> Mapping[str, Any] | None:
    versions = view.get("versions")
    if isinstance(versions, Mapping):
        found = versions.get(version)
        return found if isinstance(found, Mapping) else None
    if isinstance(versions, list):
        return next((v for v in versions if isinstance(v, Mapping) and v.get("version") == version), None)
    return None


def breaker_states(health: HealthView | None, targets: Iterable[tuple[str, str]]) -> BreakerProbe:
    """Read the breakers of ``targets`` (model, version) now; the probe answers from that reading.

    A view shaped ``{"versions": {v: {"breaker": {"state": ...}}}}`` (or a list of versions
    with a ``version`` field) gives True/False; anything else gives None (check skipped).
    """
    states: dict[tuple[str, str], bool | None] = {}
    for model, version in targets:
        state = None
        view = health(model) if health is not None else None
        vview = _version_view(view, version) if isinstance(view, Mapping) else None
        breaker = vview.get("breaker") if vview is not None else None
        if isinstance(breaker, Mapping) and isinstance(breaker.get("state"), str):
            state = breaker["state"] == "open"
        states[(model, version)] = state
    return lambda model, version: states.get((model, version))


class CanaryLoop:
    def __init__(
        self,
        service: ExperimentsService,
        *,
        health: HealthView | None = None,
        now: Callable[[], float] = time.time,
        period_s: float = 1.0,
    ) -> None:
        self.service = service
        self.health = health
        self.now = now
        self.period_s = period_s

    def tick(self, breaker: BreakerProbe | None = None) -> list[Experiment]:
        """One pass over the running canaries; returns those that changed state (and logs why)."""
        changed = self.service.tick_canaries(self.now(), breaker)
        for exp in changed:
            last = exp.events[-1]
            log.info("canary %s (%s): %s: %s", exp.name, exp.model, last.type, last.reason)
        return changed

    async def tick_async(self) -> list[Experiment]:
        """Store work in a thread; the health view on the loop (it is the data plane's state)."""
        running = await asyncio.to_thread(self.service.running_canaries)
        targets = [(e.model, e.canary.candidate) for e in running if e.canary is not None]
        probe = breaker_states(self.health, targets) if self.health is not None else None
        return await asyncio.to_thread(self.tick, probe)

    async def run(self) -> None:
        while True:
            try:
                await self.tick_async()
            except StoreUnavailable as exc:
                log.warning("canary loop: store unavailable, retrying: %s", exc)
            except Exception:
                log.exception("canary loop: tick failed; retrying on the next period")
            await asyncio.sleep(self.period_s)


def run_canary_loop(cp: ControlPlane) -> Coroutine[Any, Any, None]:
    """The loop of a control plane, ready for ``asyncio.create_task``."""
    return CanaryLoop(cp.experiments, health=cp.health).run()
