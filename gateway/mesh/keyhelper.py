"""The workload's key work in a short-lived child process, so the parent never loads ``cryptography``.

A sidecar needs ``cryptography`` only to make a key and a CSR (with the renewal proof): at
start, and then once per rotation (every 12 hours by default). Loading it costs the sidecar
~13 MB of RSS for the rest of its life; a child that runs :mod:`gateway.mesh.keys` costs ~0.4 s
and ~36 MB for that time, then exits. Each call is one child: one JSON request on stdin, one
JSON answer on stdout. The key travels over the pipe between the two processes of the workload
only, and is written by the parent to its 0600 identity file.

The child stays off the rotation's critical path: as soon as a certificate is installed, the
next key and CSR (and the proof made with the new key) are prepared in the background, and the
signer's answer is checked in this process with the standard library (:mod:`gateway.mesh._sslcheck`).
The child also signs the sidecar's policy proofs ahead of time (:class:`gateway.mesh.proofbook.ProofBook`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from gateway.mesh._sslcheck import check_with_ssl
from gateway.mesh.identity import SpiffeId, parse_identity
from gateway.mesh.workload import Credentials, Issued, KeyRequest, RotationError

__all__ = ["HelperKeys", "main"]


class HelperKeys:
    """:class:`gateway.mesh.workload.KeyWork` in a child ``python -m gateway.mesh.keyhelper``.

    ``directory`` (the workload's private one) holds the key for the instant ``ssl`` reads it
    during a check. Call :meth:`aclose` to stop a preparation still running.
    """

    def __init__(self, directory: str | Path, python: str = sys.executable, timeout_s: float = 60.0) -> None:
        self._directory = Path(directory)
        self._argv = [python, "-m", __name__]
        self._timeout_s = timeout_s
        # The renewal prepared for the certificate with this serial, made (or being made) by a child.
        self._next: tuple[int, asyncio.Task[KeyRequest]] | None = None
        self.children = 0  # helper processes started

    async def request(self, identity: SpiffeId, current: Credentials | None) -> KeyRequest:
        prepared, self._next = self._next, None
        if prepared is not None:
            serial, task = prepared
            if current is not None and serial == current.serial:
                with contextlib.suppress(RotationError):  # it failed in the background: try again now
                    return await task
            else:
                task.cancel()
        return await self._request(identity, current)

    async def check(self, identity: SpiffeId, key_pem: str, issued: Issued, now: float) -> Credentials:
        creds = check_with_ssl(identity, key_pem, issued, self._directory, now)
        if self._next is not None:
            self._next[1].cancel()
        task = asyncio.create_task(self._request(identity, creds), name=f"prepare renewal of {identity}")
        self._next = (creds.serial, task)
        return creds

    async def policy_proofs(self, identity_file: str, model: str, timestamps: list[float]) -> list[dict]:
        """Bodies of ``POST /v1/mesh/authz``, one per timestamp, signed with the identity file's key."""
        return await self._call(
            "policy_proofs", identity_file=identity_file, model=model, timestamps=timestamps
        )

    async def aclose(self) -> None:
        prepared, self._next = self._next, None
        if prepared is not None:
            prepared[1].cancel()
            with contextlib.suppress(asyncio.CancelledError, RotationError):
                await prepared[1]

    async def _request(self, identity: SpiffeId, current: Credentials | None) -> KeyRequest:
        doc = await self._call("request", identity=identity.uri, current=_credentials_doc(current))
        renewal = None
        if doc["renewal"] is not None:
            # proof.py is cryptography's side of renewals; only its dataclass is used here.
            from gateway.mesh.proof import RenewalProof

            renewal = RenewalProof(doc["renewal"]["certificate"], doc["renewal"]["signature"])
        return KeyRequest(doc["key"], doc["csr"], renewal)

    async def _call(self, op: str, **args: Any) -> Any:
        self.children += 1
        try:
            child = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise RotationError(f"cannot start the key helper {self._argv[0]}: {exc}") from None
        try:
            out, err = await asyncio.wait_for(
                child.communicate(json.dumps({"op": op, **args}).encode()), self._timeout_s
            )
        except BaseException:  # a timeout, or the caller cancelled (shutdown): no orphan
            if child.returncode is None:
                child.kill()
                await child.wait()
            raise
        try:
            answer = json.loads(out)
        except ValueError:
            lines = err.decode(errors="replace").strip().splitlines()
            detail = lines[-1] if lines else f"exit status {child.returncode}"
            raise RotationError(f"the key helper failed ({op}): {detail}") from None
        if "error" in answer:
            raise RotationError(answer["error"])
        return answer["ok"]


def _credentials_doc(creds: Credentials | None) -> dict[str, Any] | None:
    if creds is None:
        return None
    return {
        "key_pem": creds.key_pem,
        "cert_pem": creds.cert_pem,
        "serial": creds.serial,
        "not_after": creds.not_after,
    }


# -- the child -------------------------------------------------------------------------
def _run(request: dict[str, Any]) -> Any:
    op = request["op"]
    if op == "request":
        from gateway.mesh.keys import new_request

        current = request["current"]
        made = new_request(
            parse_identity(request["identity"]), None if current is None else Credentials(**current)
        )
        renewal = made.renewal
        return {
            "key": made.key_pem,
            "csr": made.csr_pem,
            "renewal": None
            if renewal is None
            else {"certificate": renewal.certificate, "signature": renewal.signature},
        }
    if op == "policy_proofs":
        from gateway.mesh.policies import sign_policy_proof

        return [
            sign_policy_proof(request["identity_file"], request["model"], t) for t in request["timestamps"]
        ]
    raise ValueError(f"unknown key helper operation {op!r}")


def main() -> int:
    """One request from stdin, one answer on stdout: ``{"ok": ...}`` or ``{"error": message}``."""
    try:
        answer: dict[str, Any] = {"ok": _run(json.load(sys.stdin))}
    except (RotationError, ValueError, KeyError, TypeError, OSError) as exc:
        answer = {"error": str(exc) if isinstance(exc, RotationError) else f"{type(exc).__name__}: {exc}"}
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
