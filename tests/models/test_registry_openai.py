"""Registry: protocol openai versions carry an upstream name, a key reference and prices."""

from __future__ import annotations

import pytest

from experiments.routes import build_route_table
from models.registry import ModelVersion, RegistryError, protocol_conflict
from router.table import LlmRoute

EP = ["http://127.0.0.1:9101"]


def test_openai_version_round_trips_and_compiles() -> None:
    mv = ModelVersion.create(
        "chat",
        "v1",
        EP,
        protocol="openai",
        upstream_model="tinylm",
        api_key="env:V2_KEY",
        price_in=0.1,
        price_out=0.4,
    )
    assert ModelVersion.from_dict(mv.to_dict()) == mv
    snap = {
        "models": {"chat": {"name": "chat", "default_version": "v1"}},
        "versions": {"chat/v1": mv.to_dict()},
    }
    route = build_route_table(1, snap).models["chat"].versions["v1"]
    assert route.llm == LlmRoute("tinylm", "env:V2_KEY", 0.1, 0.4)


def test_upstream_model_defaults_to_the_model_name_and_oip_has_no_llm_route() -> None:
    llm = ModelVersion.create("chat", "v1", EP, protocol="openai")
    oip = ModelVersion.create("digits", "v1", EP)
    assert "upstream_model" not in oip.to_dict()
    snap = {
        "models": {m: {"name": m, "default_version": "v1"} for m in ("chat", "digits")},
        "versions": {"chat/v1": llm.to_dict(), "digits/v1": oip.to_dict()},
    }
    table = build_route_table(1, snap)
    assert table.models["chat"].versions["v1"].llm == LlmRoute("chat")
    assert table.models["digits"].versions["v1"].llm is None


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"api_key": "sk-live-123"}, "api_key"),  # a literal key: the registry holds no secret
        ({"api_key": "file:relative"}, "api_key"),
        ({"price_in": -1}, "price_in"),
        ({"price_out": float("nan")}, "price_out"),
        ({"price_in": True}, "price_in"),
        ({"upstream_model": ""}, "upstream_model"),
        ({"upstream_model": 7}, "upstream_model"),
    ],
)
def test_bad_llm_fields_are_refused_naming_the_field(fields: dict, bad: str) -> None:
    with pytest.raises(RegistryError) as info:
        ModelVersion.create("chat", "v1", EP, protocol="openai", **fields)
    assert info.value.field == bad
    assert "sk-live" not in str(info.value)  # a refused key is never echoed


def test_llm_fields_need_protocol_openai() -> None:
    with pytest.raises(RegistryError) as info:
        ModelVersion.create("digits", "v1", EP, price_in=1.0)
    assert info.value.field == "price_in"


def test_a_model_speaks_one_protocol() -> None:
    mv = ModelVersion.create("chat", "v2", EP, protocol="openai")
    assert protocol_conflict(mv, {"v1": "openai", "v2": "v2"}) is None  # replacing v2 itself
    assert "speaks protocol 'v2'" in protocol_conflict(mv, {"v1": "v2"})
