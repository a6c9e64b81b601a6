"""A workload's own identity (an SVID source): local key, CSR, certificate, rotation at half life.

The private key is generated on the workload and never leaves it (a fresh key at every
renewal). Certificates come from a pluggable async *signer*: :func:`gateway.mesh.signers.local_signer`
when the CA is in the same process, :func:`gateway.mesh.signers.control_plane_signer` over HTTP.
The first certificate is paid for with the join token; renewals with a renewal proof made with
the current key. The key work itself (key, CSR, proof, checks of the answer) is pluggable too
(:class:`KeyWork`): in this process (:class:`gateway.mesh.keys.LocalKeys`, the default), or in a
short-lived child process (:class:`gateway.mesh.keyhelper.HelperKeys`), so that this module
imports no ``cryptography`` and a sidecar never loads it.

Rotation reloads the new chain into the *same* ``SSLContext`` objects the server and the
upstream pool already hold. OpenSSL copies the certificate and key into each connection when
the connection is created, so ``load_cert_chain`` changes what new handshakes present and
leaves established connections (and their in-flight requests) alone: no listener restart,
no pool flush. Trust-bundle updates add roots the same way (OpenSSL cannot remove a root
from a live context: dropping a retired root takes new contexts, i.e. a restart).

Files, in a 0700 directory: ``identity.pem`` (key + certificate, 0600, replaced atomically so
the pair is never torn) and ``bundle.pem``. A restart reuses a still-valid certificate, so it
needs no new token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from gateway.mesh._files import private_dir, write_private, write_public
from gateway.mesh.identity import SpiffeId, parse_identity
from gateway.mesh.tls import client_context, load_bundle, server_context

if TYPE_CHECKING:
    from gateway.mesh.proof import RenewalProof

__all__ = [
    "Credentials",
    "Issued",
    "KeyRequest",
    "KeyWork",
    "RotationError",
    "SignRequest",
    "Signer",
    "WorkloadIdentity",
]

log = logging.getLogger("meshgate.mesh")

IDENTITY_FILE = "identity.pem"
BUNDLE_FILE = "bundle.pem"


@dataclass(frozen=True, slots=True)
class SignRequest:
    identity: SpiffeId
    csr_pem: str
    renewal: RenewalProof | None  # None: the first certificate, paid for with the join token


@dataclass(frozen=True, slots=True)
class Issued:
    certificate: str  # the leaf PEM
    bundle: str  # the mesh trust bundle PEM


Signer = Callable[[SignRequest], Awaitable[Issued]]


class RotationError(RuntimeError):
    """The signer answered with something this workload must not install."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """A checked key and certificate, with what the workload reads from the certificate."""

    key_pem: str  # unencrypted PKCS#8
    cert_pem: str
    serial: int
    not_after: float  # Unix seconds


@dataclass(frozen=True, slots=True)
class KeyRequest:
    """A new key and its CSR; ``renewal`` is the proof made with the current key (None: first)."""

    key_pem: str
    csr_pem: str
    renewal: RenewalProof | None


class KeyWork(Protocol):
    """Where keys are made and signer answers checked (see :mod:`gateway.mesh.keys`)."""

    async def request(self, identity: SpiffeId, current: Credentials | None) -> KeyRequest:
        """A fresh key and CSR for ``identity``; with ``current``, a renewal proof made with its key."""
        ...

    async def check(self, identity: SpiffeId, key_pem: str, issued: Issued, now: float) -> Credentials:
        """The credentials, or RotationError when the certificate is not for this key and identity,
        does not chain to the bundle, or has expired."""
        ...


class WorkloadIdentity:
    """Holds this workload's key and certificate and keeps them fresh.

    ``refresh_fraction`` 0.5 renews at half the remaining life of each certificate (Istio's
    default); a failed renewal is retried with exponential backoff from ``retry_s[0]`` to
    ``retry_s[1]`` while the current certificate keeps serving. ``keys`` does the key work
    (default: :class:`gateway.mesh.keys.LocalKeys`, in this process).
    """

    def __init__(
        self,
        identity: SpiffeId | str,
        directory: str | os.PathLike[str],
        signer: Signer,
        *,
        refresh_fraction: float = 0.5,
        retry_s: tuple[float, float] = (1.0, 30.0),
        now: Callable[[], float] = time.time,
        keys: KeyWork | None = None,
    ) -> None:
        if not 0 < refresh_fraction < 1:
            raise ValueError(f"refresh_fraction {refresh_fraction} must be in (0, 1)")
        if keys is None:
            from gateway.mesh.keys import LocalKeys  # cryptography, for processes that have it anyway

            keys = LocalKeys()
        self._keys = keys
        self.identity = identity if isinstance(identity, SpiffeId) else parse_identity(identity)
        self.directory = Path(directory)
        self._signer = signer
        self._refresh_fraction = refresh_fraction
        self._retry_s = retry_s
        self._now = now
        # Contexts handed out; weak, so a context its owner dropped is not kept alive by rotation.
        self._contexts: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()
        self._creds: Credentials | None = None
        self._bundle = ""
        self._refresh_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._rotating = asyncio.Lock()  # a manual rotate() and the timer's never interleave
        self.rotations = 0
        self.failures = 0
        self.last_error: str | None = None

    # -- what callers read -----------------------------------------------------------
    @property
    def identity_file(self) -> Path:
        """Key and certificate in one PEM file (``load_cert_chain(identity_file)``)."""
        return self.directory / IDENTITY_FILE

    @property
    def bundle_file(self) -> Path:
        return self.directory / BUNDLE_FILE

    @property
    def bundle_pem(self) -> str:
        return self._bundle

    def _current(self) -> Credentials:
        if self._creds is None:
            raise RuntimeError("the workload identity has no certificate yet: await start() first")
        return self._creds

    @property
    def certificate_pem(self) -> str:
        return self._current().cert_pem

    @property
    def serial(self) -> int:
        return self._current().serial

    @property
    def not_after(self) -> float:
        """Expiry of the current certificate, Unix seconds (the certificate-expiry metric)."""
        return self._current().not_after

    @property
    def refresh_at(self) -> float:
        return self._refresh_at

    def server_context(self, *, require_client_cert: bool = True) -> ssl.SSLContext:
        """A mesh server context that follows every rotation."""
        self._current()
        ctx = server_context(self.identity_file, None, self._bundle, require_client_cert=require_client_cert)
        self._contexts.add(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A mesh client context (for the upstream pool) that follows every rotation."""
        self._current()
        ctx = client_context(self.identity_file, None, self._bundle)
        self._contexts.add(ctx)
        return ctx

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Get a certificate (reusing a valid one on disk) and start the rotation task."""
        private_dir(self.directory)
        restored = await self._restore()
        if restored is None:
            await self.rotate()
        else:
            self._install(*restored)
        self._task = asyncio.create_task(self._rotate_forever(), name=f"rotate {self.identity}")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def rotate(self) -> None:
        """Renew now: new key, CSR, signature, checks, then the files and every live context.

        With a current certificate still valid, the signer gets a renewal proof; once it has
        expired (renewals failed for half a lifetime), only a new join token can help.
        """
        async with self._rotating:
            current = self._creds
            valid = current if current is not None and self._now() < current.not_after else None
            request = await self._keys.request(self.identity, valid)
            issued = await self._signer(SignRequest(self.identity, request.csr_pem, request.renewal))
            creds = await self._keys.check(self.identity, request.key_pem, issued, self._now())
            self._install(creds, issued.bundle)
            self.rotations += current is not None  # renewals only, not the first certificate

    # -- internals -------------------------------------------------------------------
    async def _restore(self) -> tuple[Credentials, str] | None:
        """The certificate a previous run left, if it is still ours and valid."""
        try:
            pem = self.identity_file.read_text()
            bundle = self.bundle_file.read_text()
        except FileNotFoundError:
            return None
        start = pem.find("-----BEGIN CERTIFICATE-----")
        if start < 0:
            return None
        try:
            return await self._keys.check(
                self.identity, pem[:start], Issued(pem[start:], bundle), self._now()
            ), bundle
        except RotationError:
            return None

    def _install(self, creds: Credentials, bundle: str) -> None:
        write_private(self.identity_file, creds.key_pem + creds.cert_pem)
        if bundle != self._bundle:
            write_public(self.bundle_file, bundle)
        for ctx in list(self._contexts):
            ctx.load_cert_chain(self.identity_file)
            if bundle != self._bundle:
                load_bundle(ctx, bundle)
        self._creds, self._bundle = creds, bundle
        now = self._now()
        self._refresh_at = now + (creds.not_after - now) * self._refresh_fraction
        log.info(
            "identity %s: certificate serial %x valid until %.0f, renewing at %.0f",
            self.identity,
            creds.serial,
            creds.not_after,
            self._refresh_at,
        )

    async def _rotate_forever(self) -> None:
        backoff = self._retry_s[0]
        while True:
            await asyncio.sleep(max(0.0, self._refresh_at - self._now()))
            try:
                await self.rotate()
            except Exception as exc:  # the signer's failures are many (network, CA, token): all retried
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "identity %s: renewal failed (%s); retrying in %.1f s", self.identity, exc, backoff
                )
                self._refresh_at = self._now() + backoff
                backoff = min(backoff * 2, self._retry_s[1])
            else:
                backoff = self._retry_s[0]
                self.last_error = None
