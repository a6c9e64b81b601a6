"""The live data plane in ``/v1/overview`` and ``meshgate status``: one row per gateway heartbeat,
with its readiness, config version, requests and counter buffers; dropped data is called out."""

from __future__ import annotations

import os
import subprocess
import time

from gateway.registration import GATEWAYS_NAMESPACE
from gateway.runtime import default_store_url
from gateway.store import Write, open_store
from tests.support import MESHGATE, wait_for
from tests.support.inprocess import OTHER, in_process_mesh


def _wait_for_gateways(mesh, ids: set[str]) -> list[dict]:
    return wait_for(
        lambda: mesh.admin.get("/v1/overview").json()["gateways"],
        lambda rows: ids <= {g["id"] for g in rows},
        what=f"gateways {sorted(ids)} in the overview",
    )


def test_overview_and_status_list_the_live_gateways(tmp_path):
    data_dir = tmp_path / "data"
    with in_process_mesh(data_dir, {"MESHGATE_ACCESS_LOG": "off"}) as mesh:
        own = mesh.running.registration.identity.id
        store = open_store(default_store_url(str(data_dir)))
        try:
            store.put_records(GATEWAYS_NAMESPACE, {"other-gw": {**OTHER, "last_seen": time.time()}}, 30.0)
            store.put_records(
                GATEWAYS_NAMESPACE, {"gone-gw": {**OTHER, "last_seen": time.time(), "stopped": True}}, 30.0
            )
        finally:
            store.close()
        rows = {g["id"]: g for g in _wait_for_gateways(mesh, {own, "other-gw"})}
        assert set(rows) == {own, "other-gw"}  # a stopped gateway is not listed
        mine = rows[own]
        assert mine["address"] == mesh.url and mine["ready"] is True
        assert mine["config_version"] == mesh.running.plane.table.config_version
        assert mine["pid"] == os.getpid() and mine["age_s"] >= 0
        assert (mine["buffered"], mine["dropped"]) == (0, 0)
        other = rows["other-gw"]
        assert (other["buffered"], other["dropped"], other["requests"]) == (12, 3, 1234)
        assert other["address"] == OTHER["address"] and other["config_version"] == 3
        assert other["config_error"] == OTHER["config_error"] and mine["config_error"] is None

        res = subprocess.run(
            [*MESHGATE, "status"],
            capture_output=True,
            text=True,
            env={
                **os.environ,
                "MESHGATE_ADMIN_URL": mesh.admin_url,
                "MESHGATE_TOKEN": mesh.token,
                "COLUMNS": "250",
            },
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "gateways" in out and own in out and "other-gw" in out and "gone-gw" not in out
    assert "10.0.0.9:8080" in out and "1234" in out
    assert "gateway other-gw dropped 3 counter updates or join records" in out
    assert "[Errno 111] connection refused" in out  # printed as text, not read as markup
    assert "gateway other-gw stays on config version 3: config version 4 does not compile" in out
    assert f"gateway {own} stays" not in out


def test_a_gateway_that_cannot_compile_the_newest_config_says_so(tmp_path):
    # bad data in the store: the gateway keeps its last good table, and its heartbeat says why
    data_dir = tmp_path / "data"
    with in_process_mesh(data_dir, {"MESHGATE_ACCESS_LOG": "off"}) as mesh:
        own = mesh.running.registration.identity.id
        store = open_store(default_store_url(str(data_dir)))
        try:
            bad = store.commit([Write("versions", "digits/v9", {"version": "v9"})])  # no "model"
        finally:
            store.close()
        mine = wait_for(  # the next heartbeat carries the error
            lambda: {g["id"]: g for g in mesh.admin.get("/v1/gateways").json()["gateways"]}[own],
            lambda g: g.get("config_error"),
            what="the config error in this gateway's heartbeat",
        )
    assert f"config version {bad} does not compile" in (mine["config_error"] or "")
    assert mine["config_version"] < bad
