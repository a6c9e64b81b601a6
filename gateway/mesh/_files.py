"""Private files: keys and secrets are written 0600 (in a 0700 directory) and replaced atomically."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["private_dir", "write_private", "write_public"]


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) if needed; a directory we create is 0700."""
    directory = Path(path)
    if not directory.is_dir():
        directory.mkdir(parents=True, mode=0o700)
    return directory


def _write(path: Path, data: str | bytes, mode: int) -> None:
    """Write to a temporary sibling created with ``mode``, then rename over ``path``.

    Readers see the old file or the new one, never a torn one; the file is never world-readable,
    not even for the instant between create and chmod.
    """
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # O_CREAT's mode is filtered by the umask; fchmod is not
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_private(path: str | os.PathLike[str], data: str | bytes) -> Path:
    target = Path(path)
    _write(target, data, 0o600)
    return target


def write_public(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Certificates and bundles: readable by others (they are public), still replaced atomically."""
    target = Path(path)
    _write(target, data, 0o644)
    return target
