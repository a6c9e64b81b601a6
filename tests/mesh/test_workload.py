"""A workload's identity: issuance by a signer, rotation at half life on live contexts, renewal proofs."""

from __future__ import annotations

import asyncio
import stat
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.mesh.ca import CAError, MeshCA
from gateway.mesh.proof import make_proof
from gateway.mesh.signers import local_signer
from gateway.mesh.workload import Issued, RotationError, SignRequest, WorkloadIdentity
from tests.mesh.conftest import GATEWAY, MODEL, RecordingSigner, connect, echo_server, make_csr
from tests.support import await_for


def test_rotation_keeps_established_connections_and_new_handshakes_see_the_new_certificate(ca, tmp_path):
    async def main():
        server_id = WorkloadIdentity(MODEL, tmp_path / "server", local_signer(ca, lifetime_s=3))
        client_id = WorkloadIdentity(GATEWAY, tmp_path / "client", local_signer(ca, lifetime_s=3))
        await server_id.start()
        await client_id.start()
        try:
            client_ctx = client_id.client_context()
            async with echo_server(server_id.server_context()) as server:
                first = await connect(server.port, client_ctx)
                first_serial, first_not_after = first.server_serial, server_id.not_after
                assert first_serial == server_id.serial
                server_serials, client_serials, answered = set(), set(), 0
                for _ in range(400):  # bounded: ends when both sides rotated three times
                    if server_id.rotations >= 3 and client_id.rotations >= 3:
                        break
                    assert (await first.ask()).startswith(GATEWAY + " ")  # the old connection still serves
                    answered += 1
                    conn = await connect(server.port, client_ctx)
                    server_serials.add(conn.server_serial)
                    client_serials.add((await conn.ask()).split()[1])
                    await conn.close()
                    await asyncio.sleep(0.05)  # pacing the probes (not a wait): the loop is bounded
                assert server_id.rotations >= 3 and client_id.rotations >= 3
                # The first connection outlived its certificate, kept it, and still answers.
                assert time.time() > first_not_after
                assert first.server_serial == first_serial
                assert (await first.ask()).startswith(GATEWAY + " ")
                await first.close()
                assert len(server_serials) >= 3 and len(client_serials) >= 3
                latest = await connect(server.port, client_ctx)
                assert latest.server_serial == server_id.serial != first_serial
                await latest.close()
                assert answered > 0 and server_id.failures == client_id.failures == 0
        finally:
            await server_id.aclose()
            await client_id.aclose()

    asyncio.run(main())


def test_files_are_private_and_the_pair_is_one_file(ca, tmp_path):
    async def main():
        wi = WorkloadIdentity(MODEL, tmp_path / "svid", local_signer(ca))
        await wi.start()
        await wi.aclose()
        return wi

    wi = asyncio.run(main())
    assert stat.S_IMODE(wi.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(wi.identity_file.stat().st_mode) == 0o600
    text = wi.identity_file.read_text()
    assert "PRIVATE KEY" in text and "CERTIFICATE" in text
    assert wi.bundle_file.read_text() == ca.bundle_pem()
    assert [p.name for p in wi.directory.iterdir() if p.name.endswith(".tmp")] == []


def test_renewals_use_a_proof_and_a_fresh_key(ca, tmp_path):
    signer = RecordingSigner(ca)

    async def main():
        wi = WorkloadIdentity(MODEL, tmp_path / "svid", signer)
        await wi.start()
        keys = [wi.identity_file.read_text().split("-----BEGIN CERTIFICATE")[0]]
        for _ in range(2):
            await wi.rotate()
            keys.append(wi.identity_file.read_text().split("-----BEGIN CERTIFICATE")[0])
        await wi.aclose()
        return wi, keys

    wi, keys = asyncio.run(main())
    assert [r.renewal is None for r in signer.requests] == [True, False, False]
    assert len(set(keys)) == 3 and wi.rotations == 2
    # Each proof carries the certificate it renews.
    serials = [
        x509.load_pem_x509_certificate(r.renewal.certificate.encode()).serial_number
        for r in signer.requests[1:]
    ]
    assert len(set(serials)) == 2


def test_a_restart_reuses_a_valid_certificate_without_the_signer(ca, tmp_path):
    async def main():
        first = WorkloadIdentity(MODEL, tmp_path / "svid", local_signer(ca))
        await first.start()
        await first.aclose()
        down = RecordingSigner(ca)
        down.fail = True
        second = WorkloadIdentity(MODEL, tmp_path / "svid", down)
        await second.start()
        await second.aclose()
        assert second.serial == first.serial and down.requests == []
        # A different identity in the same directory does not reuse it.
        other = WorkloadIdentity(
            "spiffe://meshgate.local/model/digits/v3", tmp_path / "svid", local_signer(ca)
        )
        await other.start()
        await other.aclose()
        assert other.serial != first.serial

    asyncio.run(main())


def test_failed_renewals_keep_the_current_certificate_and_retry(ca, tmp_path):
    signer = RecordingSigner(ca, lifetime_s=2)

    async def main():
        wi = WorkloadIdentity(MODEL, tmp_path / "svid", signer, retry_s=(0.05, 0.2))
        await wi.start()
        serial = wi.serial
        signer.fail = True
        await await_for(lambda: wi.failures, lambda n: n >= 2, what="two failed renewals")
        assert wi.serial == serial and "control plane down" in (wi.last_error or "")
        signer.fail = False
        await await_for(lambda: wi.rotations, lambda n: n >= 1, what="a rotation once the signer is back")
        assert wi.serial != serial and wi.last_error is None
        await wi.aclose()

    asyncio.run(main())


def test_signer_answers_that_would_break_the_contexts_are_refused(ca, tmp_path):
    other_ca = MeshCA.init(tmp_path / "other")

    def answer(kind: str):
        async def sign(request: SignRequest) -> Issued:
            if kind == "other-key":
                return Issued(ca.issue(request.identity)[1], ca.bundle_pem())
            if kind == "other-identity":
                return Issued(
                    ca.sign_csr(request.csr_pem.replace("", ""), request.identity, 60), ca.bundle_pem()
                )
            if kind == "other-ca":
                return Issued(other_ca.sign_csr(request.csr_pem, request.identity), ca.bundle_pem())
            return Issued("garbage", ca.bundle_pem())

        return sign

    async def main():
        wi = WorkloadIdentity(MODEL, tmp_path / "svid", local_signer(ca))
        await wi.start()
        serial = wi.serial
        for kind, words in [
            ("other-key", "not for the key"),
            ("other-ca", "does not chain"),
            ("junk", "unreadable"),
        ]:
            wi._signer = answer(kind)
            with pytest.raises(RotationError, match=words):
                await wi.rotate()
            assert wi.serial == serial
        await wi.aclose()

    asyncio.run(main())


def test_the_ca_refuses_bad_renewal_proofs(ca, tmp_path):
    csr_pem = make_csr(ec.generate_private_key(ec.SECP256R1()))
    csr, identity = ca.check_csr(csr_pem, MODEL)
    current_key_pem, current_pem = ca.issue(MODEL, 600)
    current_key = load_pem_private_key(current_key_pem.encode(), None)
    ca.verify_renewal(make_proof(csr_pem, current_pem, current_key), csr, identity)  # the good case

    def refused(proof) -> str:
        with pytest.raises(CAError) as info:
            ca.verify_renewal(proof, csr, identity)
        assert info.value.code == "renewal_refused"
        return info.value.message

    wrong_key = ec.generate_private_key(ec.SECP256R1())
    assert "does not verify" in refused(make_proof(csr_pem, current_pem, wrong_key))
    other_key_pem, other_pem = ca.issue("spiffe://meshgate.local/model/digits/v1", 600)
    other_key = load_pem_private_key(other_key_pem.encode(), None)
    assert "not spiffe://meshgate.local/model/digits/v2" in refused(make_proof(csr_pem, other_pem, other_key))
    foreign_key_pem, foreign_pem = MeshCA.init(tmp_path / "x").issue(MODEL, 600)
    foreign_key = load_pem_private_key(foreign_key_pem.encode(), None)
    assert "not issued by this mesh" in refused(make_proof(csr_pem, foreign_pem, foreign_key))
    old_key_pem, old_pem = MeshCA.load(ca.data_dir, now=lambda: time.time() - 7200).issue(MODEL, 600)
    old_key = load_pem_private_key(old_key_pem.encode(), None)
    assert "expired" in refused(make_proof(csr_pem, old_pem, old_key))


def test_workloads_keep_talking_through_a_root_rotation(ca, tmp_path):
    """Bundle first: after `prepare` every renewal carries the next root into the live contexts,
    so leaves of the new root are trusted the moment `activate` starts issuing them."""

    async def main():
        server_id = WorkloadIdentity(MODEL, tmp_path / "server", local_signer(ca))
        client_id = WorkloadIdentity(GATEWAY, tmp_path / "client", local_signer(ca))
        await server_id.start()
        await client_id.start()
        try:
            client_ctx = client_id.client_context()
            async with echo_server(server_id.server_context()) as server:
                old = await connect(server.port, client_ctx)
                next_root = ca.prepare_root()
                await server_id.rotate()
                await client_id.rotate()
                ca.activate_root()
                await client_id.rotate()  # the client now presents a leaf of the new root
                issuer = x509.load_pem_x509_certificate(client_id.certificate_pem.encode()).issuer
                assert issuer == next_root.subject
                fresh = await connect(server.port, client_ctx)
                assert (await fresh.ask()).startswith(GATEWAY + " ")
                await server_id.rotate()  # and the server too
                newest = await connect(server.port, client_ctx)
                assert newest.server_serial == server_id.serial
                assert (await newest.ask()).startswith(GATEWAY + " ")
                assert (await old.ask()).startswith(GATEWAY + " ")
                for conn in (old, fresh, newest):
                    await conn.close()
                assert server.accepted == [GATEWAY] * 3
        finally:
            await server_id.aclose()
            await client_id.aclose()

    asyncio.run(main())


def test_contexts_need_a_certificate_first(ca, tmp_path):
    wi = WorkloadIdentity(MODEL, tmp_path / "svid", local_signer(ca))
    with pytest.raises(RuntimeError, match="await start"):
        wi.server_context()
    with pytest.raises(RuntimeError, match="await start"):
        wi.client_context()
