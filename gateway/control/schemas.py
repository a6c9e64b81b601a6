"""Pydantic request bodies of the admin API (the HTTP edge only; the domain uses dataclasses)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["ModelPatch", "StrictBody", "VersionBody"]


class StrictBody(BaseModel):
    """A request body that refuses unknown fields: a misspelt field would otherwise be dropped silently."""

    model_config = ConfigDict(extra="forbid")


class VersionBody(StrictBody):
    endpoints: list[str] = Field(min_length=1, description="http(s)://host:port of each replica")
    protocol: str = Field(
        "v2",
        description="v2 = Open Inference Protocol; v2-grpc = the same over gRPC; openai = OpenAI API",
    )
    labels: dict[str, str] = Field(default_factory=dict)
    policy: dict[str, Any] | None = Field(None, description="traffic policy for this version")
    identity: str | None = Field(None, description="SPIFFE ID the endpoints must present (mTLS)")
    upstream_model: str | None = Field(None, description="openai: the model name the upstream expects")
    api_key: str | None = Field(
        None,
        description="openai: where the gateway reads the provider key: env:VAR or file:/path (never the key)",
    )
    price_in: float | None = Field(None, description="openai: USD per million prompt tokens")
    price_out: float | None = Field(None, description="openai: USD per million completion tokens")

    def registry_fields(self) -> dict[str, Any]:
        """The keyword arguments of ``ModelVersion.create`` this body carries (validated there)."""
        return self.model_dump(exclude={"endpoints"})


class ModelPatch(StrictBody):
    default_version: str | None = Field(None, description="the version unpinned requests go to")
    policy: dict[str, Any] | None = Field(None, description="model-wide default traffic policy")

    @field_validator("default_version")
    @classmethod
    def _not_null(cls, value: str | None) -> str:
        # absent leaves the default as it is; an explicit null would be accepted and ignored
        if value is None:
            raise ValueError("a model always has a default version: name one of its versions")
        return value
