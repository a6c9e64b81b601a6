"""A CA data dir that cannot be used fails with CAError naming the file, never a raw parser error."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.mesh.ca import CAError, MeshCA


def test_an_encrypted_ca_key_is_a_clear_error(ca: MeshCA) -> None:
    key = ca._active.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (ca.data_dir / "ca.key").write_bytes(key)
    with pytest.raises(CAError, match=r"not_initialised: cannot read .*ca\.key") as caught:
        MeshCA.load(ca.data_dir)
    assert "encrypted" in caught.value.message


@pytest.mark.parametrize(
    "content",
    [
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "not a certificate\n",
    ],
)
def test_a_corrupt_retired_roots_file_is_a_clear_error(ca: MeshCA, content: str) -> None:
    (ca.data_dir / "ca-retired.pem").write_text(content)
    with pytest.raises(CAError, match=r"not_initialised: cannot read .*ca-retired\.pem"):
        MeshCA.load(ca.data_dir)


def test_an_unreadable_retired_roots_file_is_a_clear_error(ca: MeshCA) -> None:
    (ca.data_dir / "ca-retired.pem").unlink()
    (ca.data_dir / "ca-retired.pem").mkdir()  # reading a directory fails, even as root
    with pytest.raises(CAError, match=r"not_initialised: cannot read .*ca-retired\.pem"):
        MeshCA.load(ca.data_dir)
