"""Secrets kept in the data dir: created once with mode 0600, never rewritten."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def load_or_create(path: Path, make: bytes | None = None) -> bytes:
    """Returns the file's bytes, creating it on first use (mode 0600).

    The file appears complete or not at all: it is written under a temporary name and then
    hard-linked into place, which fails if another process (a replica sharing the key volume)
    got there first, in which case that process's key is used. A reader never sees a file
    another process is still writing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        value = make if make is not None else secrets.token_bytes(32)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(value)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(temporary, path)
                return value
            except FileExistsError:
                pass  # another process created it first: use theirs
        finally:
            temporary.unlink(missing_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    return path.read_bytes()
