"""``/v1/experiments`` and ``/v1/canaries``: start, read, pause, resume, stop, reweight, results.

The pydantic bodies type the edge and the OpenAPI document; the domain
(``experiments.experiment``, ``experiments.canary``) validates meaning with field paths.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from gateway.control.canary_loop import HealthView, breaker_states
from gateway.control.experiments_service import ExperimentsService

__all__ = ["experiments_router"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArmBody(_Strict):
    version: str
    weight: float = Field(description="relative weight >= 0")


class MetricBody(_Strict):
    name: str
    kind: str = Field("binary", description="binary | continuous")
    higher_is_better: bool = True


class ExperimentBody(_Strict):
    name: str
    model: str
    arms: list[ArmBody] | dict[str, float] = Field(description="[{version, weight}] or {version: weight}")
    control: str | None = Field(None, description="the control arm (default: the first)")
    metrics: list[MetricBody | str] = Field(default_factory=list, description="feedback metrics")
    engine: str = Field("sequential", description="sequential | frequentist | bayesian")
    alpha: float = 0.05
    key_header: str = Field("x-meshgate-key", description="header carrying the unit (user) id")
    salt: str | None = Field(None, description="hash salt (default: the name)")


class WeightsPatch(_Strict):
    weights: dict[str, float] = Field(description="version -> new weight (monotone ranges)")


class GateBody(MetricBody):
    margin: float = Field(0.0, description="tolerated harm in metric units")


class CanaryBody(_Strict):
    model: str
    candidate: str
    baseline: str | None = Field(None, description="default: the model's default version")
    name: str | None = Field(None, description="default: canary-<model>-<candidate>")
    steps: list[float] = Field(default=[5, 25, 50, 100], description="candidate percentages")
    interval_s: float = 30.0
    min_requests: int = 200
    max_error_rate_increase: float = Field(0.02, description="non-inferiority margin of the error rate")
    max_p99_ms: float | None = None
    max_p99_ratio: float | None = None
    max_ttft_p99_ms: float | None = Field(None, description="LLM: candidate p99 time to first token bound")
    max_cost_ratio: float | None = Field(None, description="LLM: candidate cost per request / baseline's")
    metric: GateBody | None = None
    alpha: float = 0.05
    key_header: str = "x-meshgate-key"
    salt: str | None = None


def _given(body: BaseModel) -> dict[str, Any]:
    """Only the fields the caller sent (null = not sent): the domain applies its own defaults."""
    return {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None}


def experiments_router(service: ExperimentsService, health: HealthView | None) -> APIRouter:
    router = APIRouter(tags=["experiments"])

    @router.post("/v1/experiments", status_code=201)
    def create(body: ExperimentBody) -> dict:
        return service.create(_given(body)).to_dict()

    @router.get("/v1/experiments")
    def list_experiments(model: str | None = None) -> dict:
        return {"experiments": [e.to_dict() for e in service.list(model)]}

    @router.get("/v1/experiments/{name}")
    def get(name: str) -> dict:
        return service.get(name).to_dict()

    @router.patch("/v1/experiments/{name}")
    def patch(name: str, body: WeightsPatch) -> dict:
        return service.reweight(name, body.weights).to_dict()

    @router.post("/v1/experiments/{name}/stop")
    def stop(name: str) -> dict:
        return service.stop(name).to_dict()

    @router.post("/v1/experiments/{name}/pause")
    def pause(name: str) -> dict:
        return service.pause(name).to_dict()

    @router.post("/v1/experiments/{name}/resume")
    def resume(name: str) -> dict:
        return service.resume(name).to_dict()

    @router.get("/v1/experiments/{name}/results")
    def results(name: str) -> dict:
        return service.results(name)

    @router.post("/v1/canaries", status_code=201, tags=["canaries"])
    def start_canary(body: CanaryBody) -> dict:
        return service.start_canary(_given(body)).to_dict()

    @router.get("/v1/canaries/{model}", tags=["canaries"])
    async def canary_status(model: str) -> dict:
        # async: the health view is read on the loop that owns the data plane; the store in a thread
        exp = await asyncio.to_thread(service.canary, model)
        probe = None
        if health is not None and exp.canary is not None:
            probe = breaker_states(health, [(exp.model, exp.canary.candidate)])
        return await asyncio.to_thread(service.canary_status, model, probe)

    @router.post("/v1/canaries/{model}/promote", tags=["canaries"])
    def promote(model: str) -> dict:
        return service.promote_canary(model).to_dict()

    @router.post("/v1/canaries/{model}/abort", tags=["canaries"])
    def abort(model: str) -> dict:
        return service.abort_canary(model).to_dict()

    @router.post("/v1/canaries/{model}/pause", tags=["canaries"])
    def pause_canary(model: str) -> dict:
        return service.pause_canary(model).to_dict()

    @router.post("/v1/canaries/{model}/resume", tags=["canaries"])
    def resume_canary(model: str) -> dict:
        return service.resume_canary(model).to_dict()

    return router
