"""Pydantic request bodies of the admin API (the HTTP edge only; the domain uses dataclasses)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ModelPatch", "StrictBody", "VersionBody"]


class StrictBody(BaseModel):
    """A request body that refuses unknown fields: a misspelt field would otherwise be dropped silently."""

    model_config = ConfigDict(extra="forbid")


class VersionBody(StrictBody):
    endpoints: list[str] = Field(min_length=1, description="http(s)://host:port of each replica")
    protocol: str = Field("v2", description="v2 = Open Inference Protocol")
    labels: dict[str, str] = Field(default_factory=dict)
    policy: dict[str, Any] | None = Field(None, description="traffic policy for this version")
    identity: str | None = Field(None, description="SPIFFE ID the endpoints must present (mTLS)")


class ModelPatch(StrictBody):
    default_version: str | None = None
    policy: dict[str, Any] | None = Field(None, description="model-wide default traffic policy")
