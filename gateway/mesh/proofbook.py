"""Policy proofs signed ahead, so a sidecar reads its policy every few seconds without cryptography.

A policy proof (:func:`gateway.mesh.policies.sign_policy_proof`) is accepted while its timestamp
is within :data:`~gateway.mesh.policies.PROOF_WINDOW_S` (300 s) of the control plane's clock.
One key-helper run signs a *book* of proofs whose timestamps are :data:`_STEP` apart, so that
at any moment one of them is within ``PROOF_WINDOW_S - _MARGIN_S`` of now (a minute of margin
for clocks that disagree). A book covers about two hours, and is thrown away when the
certificate changes (each proof carries the certificate it was signed with).

The cost: proofs exist before their time. Each is sent only while it is current, so a proof
seen on the wire is replayable for at most ``2 * (PROOF_WINDOW_S - _MARGIN_S) + _MARGIN_S``
(~9 minutes) instead of ~5, and it only reads a policy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.mesh.policies import PROOF_WINDOW_S

if TYPE_CHECKING:
    from gateway.mesh.keyhelper import HelperKeys
    from gateway.mesh.workload import WorkloadIdentity

__all__ = ["ProofBook"]

_MARGIN_S = 60.0
_REACH_S = PROOF_WINDOW_S - _MARGIN_S  # a proof is used while now is within this of its timestamp
_STEP = 2 * _REACH_S


class ProofBook:
    """The current policy proof for ``model``, from a book signed by ``signer`` (a HelperKeys)."""

    def __init__(
        self,
        signer: HelperKeys,
        identity: WorkloadIdentity,
        model: str,
        *,
        size: int = 16,
        now: Callable[[], float] = time.time,
    ) -> None:
        if size < 1:
            raise ValueError(f"a proof book holds at least one proof, not {size}")
        self._signer = signer
        self._identity = identity
        self._model = model
        self._size = size
        self._now = now
        self._serial: int | None = None
        self._start = 0.0
        self._proofs: list[dict] = []
        self.signed = 0  # books signed (each one helper run)

    async def current(self) -> dict:
        """A proof the control plane accepts now (signing a new book when needed)."""
        now = self._now()
        index = int((now - self._start) // _STEP)
        if self._serial != self._identity.serial or not 0 <= index < len(self._proofs):
            serial = self._identity.serial
            timestamps = [now + _REACH_S + k * _STEP for k in range(self._size)]
            self._proofs = await self._signer.policy_proofs(
                str(self._identity.identity_file), self._model, timestamps
            )
            self._serial, self._start, index = serial, now, 0
            self.signed += 1
        return self._proofs[index]
