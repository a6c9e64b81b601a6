"""Certificate rotation under continuous load: 4-second certificates, several rotations, no failure.

The gateway (``up --cert-lifetime 4s``) and the sidecar (``--cert-lifetime 4``) renew at half life,
about every two seconds. Three kinds of traffic run at once for ~12 s: keep-alive requests through
the gateway's data port to the sidecar (established connections must survive rotations), and fresh
mTLS connections straight to the sidecar and to the gateway's mesh port (every new handshake must
present a current certificate). Each fresh handshake records the server certificate's serial, so
the test sees the rotations from the outside.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.support.mesh import BODY, TD, client_context, issue, mesh_with_port, sidecar, tls_post
from tests.support.procs import HOST, model_server

LOAD_S = 12.0
MAX_REQUESTS = 20_000  # per worker: the loop is bounded even on a very fast machine


def test_rotation_under_continuous_load_drops_nothing(tmp_path: Path) -> None:
    with (
        mesh_with_port(tmp_path, "--cert-lifetime", "4s") as mesh,
        model_server(tmp_path, "echo", "v1") as echo,
        sidecar(mesh, tmp_path, "echo", "v1", echo, "--cert-lifetime", "4") as side,
    ):
        mesh.register("echo", "v1", f"https://{HOST}:{side.port}", identity=f"{TD}/model/echo/v1")
        mesh.wait_routable("echo")
        cert, key, bundle = issue(mesh.data_dir, "gateway/loadtester", tmp_path / "certs")
        failures: list[str] = []
        served = {"gateway": 0, "sidecar": 0, "mesh-port": 0}
        serials: dict[str, set[str]] = {"sidecar": set(), "mesh-port": set()}
        lock = threading.Lock()
        deadline = time.monotonic() + LOAD_S

        def keep_alive() -> None:
            import httpx

            with httpx.Client(base_url=mesh.url, timeout=10) as client:
                for _ in range(MAX_REQUESTS):
                    if time.monotonic() >= deadline:
                        return
                    try:
                        resp = client.post("/v2/models/echo/infer", content=BODY)
                        ok = resp.status_code == 200
                        why = f"{resp.status_code} {resp.headers.get('x-meshgate-error')} {resp.text[:200]}"
                    except Exception as exc:
                        ok, why = False, repr(exc)
                    with lock:
                        served["gateway"] += ok
                        if not ok:
                            failures.append(f"gateway: {why}")

        def fresh(name: str, port: int) -> None:
            ctx = client_context(bundle, cert, key)
            for _ in range(MAX_REQUESTS):
                if time.monotonic() >= deadline:
                    return
                try:
                    status, headers, body, peer = tls_post(port, ctx, "/v2/models/echo/infer")
                    ok, why = status == 200, f"{status} {headers.get('x-meshgate-error')} {body[:200]!r}"
                except Exception as exc:
                    ok, why, peer = False, repr(exc), {}
                with lock:
                    served[name] += ok
                    if ok:
                        serials[name].add(peer["serialNumber"])
                    else:
                        failures.append(f"{name}: {why}")

        workers = [threading.Thread(target=keep_alive) for _ in range(3)]
        workers.append(threading.Thread(target=fresh, args=("sidecar", side.port)))
        workers.append(threading.Thread(target=fresh, args=("mesh-port", mesh.mesh_port)))
        for w in workers:
            w.start()
        for w in workers:
            w.join(LOAD_S + 60)
        assert not any(w.is_alive() for w in workers)

        assert failures == [], failures[:5]
        assert all(n > 0 for n in served.values()), served
        # several rotations happened while the load ran, on both sides
        assert len(serials["sidecar"]) >= 3, serials
        assert len(serials["mesh-port"]) >= 3, serials
        assert side.log().count("certificate serial") >= 4
        assert "renewal failed" not in side.log() + mesh.proc.output()
