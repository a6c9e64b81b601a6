"""Test helpers for the model server: a raw HTTP client and request builders."""

from __future__ import annotations

import json
import socket
from typing import Any

import numpy as np


class RawClient:
    """A bare socket, to send exactly the bytes a test needs and read the answers back."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_response(self) -> tuple[int, dict[str, str], bytes]:
        status_line = self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split(b" ")[1])
        headers: dict[str, str] = {}
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self.reader.read(int(headers.get("content-length", "0")))
        return status, headers, body

    def read_json(self) -> tuple[int, dict[str, str], Any]:
        status, headers, body = self.read_response()
        return status, headers, json.loads(body)

    def at_eof(self) -> bool:
        return self.reader.read(1) == b""

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def http_request(method: str, path: str, body: bytes = b"", headers: str = "", version: str = "1.1") -> bytes:
    """Bytes of one request with a Content-Length body (when there is a body or it is a POST)."""
    length = f"content-length: {len(body)}\r\n" if body or method == "POST" else ""
    return f"{method} {path} HTTP/{version}\r\nhost: test\r\n{headers}{length}\r\n".encode() + body


def infer_body(pixels: np.ndarray, **extra: Any) -> bytes:
    """A digits infer request for `pixels` [n,64]; `extra` adds top-level fields (`id`, `outputs`)."""
    tensor = {"name": "pixels", "shape": list(pixels.shape), "datatype": "FP32", "data": pixels.tolist()}
    doc = {"inputs": [tensor], **extra}
    return json.dumps(doc).encode()
