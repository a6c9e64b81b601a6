"""OpenFeature's own OFREP provider against a real gateway's data port."""

from __future__ import annotations

import httpx

from tests.support import free_port, running_mesh, wait_for
from tests.support.ofrep import FLAGS, check_cases


def test_openfeature_sdk_resolves_the_gateways_flags(tmp_path):
    with running_mesh(tmp_path / "data") as mesh:
        for version in ("v1", "v2"):  # a routing flag needs its model's versions (never called here)
            mesh.register("digits", version, f"http://127.0.0.1:{free_port()}")
        for flag in FLAGS:
            r = mesh.admin.put(f"/v1/flags/{flag['key']}", json=flag)
            assert r.status_code == 201, r.text
        _wait_flags(mesh.url, {f["key"] for f in FLAGS})
        check_cases(mesh.url)

        unknown = httpx.post(f"{mesh.url}/ofrep/v1/evaluate/flags/nope", json={"context": {}})
        assert unknown.status_code == 404 and unknown.json()["errorCode"] == "FLAG_NOT_FOUND"
        bad = httpx.post(f"{mesh.url}/ofrep/v1/evaluate/flags/{FLAGS[0]['key']}", content=b"{nope")
        assert bad.status_code == 400 and bad.json()["errorCode"] == "PARSE_ERROR"
        bulk = httpx.post(f"{mesh.url}/ofrep/v1/evaluate/flags", json={"context": {"targetingKey": "u1"}})
        assert bulk.status_code == 200 and {f["key"] for f in bulk.json()["flags"]} == {
            f["key"] for f in FLAGS
        }
        again = httpx.post(
            f"{mesh.url}/ofrep/v1/evaluate/flags",
            json={"context": {"targetingKey": "u1"}},
            headers={"if-none-match": bulk.headers["etag"]},
        )
        assert again.status_code == 304
        assert httpx.get(f"{mesh.url}/ofrep/v1/evaluate/flags").status_code == 405


def _wait_flags(url: str, keys: set[str]) -> None:
    wait_for(
        lambda: httpx.post(f"{url}/ofrep/v1/evaluate/flags", json={"context": {"targetingKey": "probe"}}),
        lambda r: r.status_code == 200 and {f["key"] for f in r.json()["flags"]} == keys,
        what=f"the flags {sorted(keys)} on the data plane",
    )
