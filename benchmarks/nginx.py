"""nginx as the reference reverse proxy: a weighted split with upstream keep-alive, config written here.

    with nginx_proxy([("http://127.0.0.1:9001", 90), ("http://127.0.0.1:9002", 10)]) as proxy:
        proxy.url, proxy.pids()

`NGINX` is None when nginx is not installed; `nginx_proxy` then raises `NginxMissing` with the
install hint, and the benchmarks say so instead of failing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from gateway.localproc import free_port

__all__ = ["NGINX", "NginxMissing", "NginxProxy", "nginx_proxy"]

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)

_CONFIG = """
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
{upstreams}
    split_clients "${{request_id}}" $meshgate_backend {{
{split}
    }}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=1024;
        location / {{
            proxy_pass http://$meshgate_backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering on;
        }}
    }}
}}
"""


class NginxMissing(RuntimeError):
    pass


def render_config(directory: Path, port: int, upstreams: list[tuple[str, float]]) -> str:
    """nginx.conf for a weighted split (split_clients on the request id) with upstream keep-alive."""
    blocks, split = [], []
    total = sum(weight for _, weight in upstreams)
    for i, (url, weight) in enumerate(upstreams):
        parts = urlsplit(url)
        blocks.append(f"    upstream meshgate_u{i} {{ server {parts.hostname}:{parts.port}; keepalive 64; }}")
        share = "*" if i == len(upstreams) - 1 else f"{100 * weight / total:g}%"
        split.append(f"        {share} meshgate_u{i};")
    return _CONFIG.format(dir=directory, port=port, upstreams="\n".join(blocks), split="\n".join(split))


class NginxProxy:
    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def pids(self) -> list[int]:
        """The master and its workers: the processes whose CPU time is the proxy's cost."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        worker_pids = [int(p) for p in children.read_text().split()] if children.exists() else []
        return [self.process.pid, *worker_pids]


@contextmanager
def nginx_proxy(upstreams: list[tuple[str, float]], port: int | None = None) -> Iterator[NginxProxy]:
    if NGINX is None:
        raise NginxMissing(
            "nginx is not installed (apt-get install nginx-light); skipping the nginx baseline"
        )
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="meshgate-nginx-") as tmp:
        directory = Path(tmp)
        config = directory / "nginx.conf"
        config.write_text(render_config(directory, port, upstreams))
        process = subprocess.Popen(
            [NGINX, "-p", str(directory), "-c", str(config), "-e", str(directory / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"nginx exited: {process.stderr.read().decode() if process.stderr else ''}"
                    )
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("nginx did not start listening within 10 s") from None
                    time.sleep(0.05)
            yield NginxProxy(process, port)
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
