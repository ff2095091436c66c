"""Blobs on the local file system, under `<data_dir>/blobs`.

Uploads arrive in chunks that are written at their offset and fsynced before the
committed offset is recorded in the database, so an interrupted upload resumes from what
is durably on disk and a file is never held whole in memory. A finished upload is renamed
into place atomically. Replicas must share the directory (a common mount).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

READ_BLOCK = 1024 * 1024


def blake2b_hex(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=64).hexdigest()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def for_data_dir(data_dir: str) -> BlobStore:
        return BlobStore(Path(data_dir) / "blobs")

    def path(self, key: str) -> Path:
        """Keys are relative slash paths built by the domain; nothing may escape the root."""
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"bad blob key {key!r}")
        return self.root.joinpath(*parts)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        path = self.path(key)
        return path.stat().st_size if path.is_file() else 0

    def truncate(self, key: str, size: int) -> None:
        """Drops bytes past the committed offset: they were written but never recorded."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_at(self, key: str, offset: int, data: bytes) -> None:
        """Writes one chunk and fsyncs it before the caller records the new offset."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            written = 0
            while written < len(view):
                written += os.pwrite(fd, view[written:], offset + written)
            os.fsync(fd)
        finally:
            os.close(fd)

    def digest(self, key: str) -> tuple[int, str]:
        """(size, BLAKE2b-512 hex) of a stored file, read block by block."""
        h = hashlib.blake2b(digest_size=64)
        size = 0
        with open(self.path(key), "rb") as fh:
            while block := fh.read(READ_BLOCK):
                h.update(block)
                size += len(block)
        return size, h.hexdigest()

    def read_at(self, key: str, offset: int, length: int) -> bytes:
        with open(self.path(key), "rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    def iter_chunks(self, key: str, offset: int, chunk: int) -> Iterator[tuple[int, bytes]]:
        with open(self.path(key), "rb") as fh:
            fh.seek(offset)
            while block := fh.read(chunk):
                yield offset, block
                offset += len(block)

    def move(self, src: str, dst: str) -> None:
        """Atomic rename into place, with the directory entry fsynced."""
        target = self.path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path(src), target)
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
