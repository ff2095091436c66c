"""Secrets kept in the data dir: created once with mode 0600, never rewritten."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def load_or_create(path: Path, make: bytes | None = None) -> bytes:
    """Returns the file's bytes, creating it atomically (O_EXCL, 0600) on first use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PermissionError(f"{path} is readable by others (mode {mode:o}); chmod 600 it") from None
        return path.read_bytes()
    value = make if make is not None else secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as fh:
        fh.write(value)
        fh.flush()
        os.fsync(fh.fileno())
    return value
