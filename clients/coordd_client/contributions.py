"""Resumable transfer of ceremony contributions, with progress callbacks.

    from coordd_client.contributions import download, upload
    download(client, circuit, Path("in.zkey"), progress=lambda done, total: ...)
    reply = upload(client, circuit, Path("out.zkey"), progress=...)

`download` continues a partial file from its size and checks the whole file's BLAKE2b-512;
`upload` asks the daemon for the committed offset (GetUploadStatus) and sends only the rest,
so a dropped connection costs the bytes in flight, not the whole file. Both retry
UNAVAILABLE with backoff; `upload` also sends the file again when the daemon received it
damaged and kept the turn (a transport fault), and after a daemon restart gets the verdict of
the upload that had already arrived. Files are streamed from disk, never held whole in memory.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from coordd_client.errors import Unavailable
from coordd_client.v1 import ceremony_pb2 as pb

CHUNK = 256 * 1024
Progress = Callable[[int, int], None]


class TransferError(Exception):
    """The transfer cannot complete (digest mismatch, out-of-order data, retries exhausted)."""


def blake2b_file(path: Path) -> bytes:
    digest = hashlib.blake2b(digest_size=64)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.digest()


def _pause(attempt: int) -> None:
    time.sleep(min(0.5 * 2**attempt, 10.0))


def download(
    client: Any,
    circuit: str,
    path: Path,
    *,
    index: int | None = None,
    progress: Progress | None = None,
    attempts: int = 6,
) -> bytes:
    """Downloads a circuit's latest valid contribution (or `index`) to `path`; returns its digest."""
    for attempt in range(attempts):
        offset = path.stat().st_size if path.exists() else 0
        total, expected = 0, b""
        request = pb.DownloadContributionRequest(circuit=circuit, offset=offset)
        if index is not None:
            request.index = index
        try:
            with open(path, "ab") as fh:
                for part in client.ceremony.DownloadContribution(request, timeout=None):
                    if part.size_bytes:
                        total = part.size_bytes
                    if part.blake2b_512:
                        expected = part.blake2b_512
                    if part.offset != fh.tell():
                        raise TransferError(
                            f"download out of order: got offset {part.offset}, have {fh.tell()}"
                        )
                    fh.write(part.data)
                    if progress:
                        progress(fh.tell(), total)
        except Unavailable:
            _pause(attempt)
            continue
        actual = blake2b_file(path)
        if expected and actual != expected:
            path.unlink()
            raise TransferError("the downloaded file does not match its BLAKE2b-512; removed, start again")
        return actual
    raise TransferError(f"download of {circuit} failed after {attempts} attempts")


def _requests(
    circuit: str,
    path: Path,
    size: int,
    digest: bytes,
    start: int,
    index: int | None,
    progress: Progress | None,
) -> Iterator[pb.UploadContributionRequest]:
    header = pb.UploadHeader(circuit=circuit, size_bytes=size, blake2b_512=digest)
    if index is not None:
        header.index = index
    yield pb.UploadContributionRequest(header=header)
    with open(path, "rb") as fh:
        fh.seek(start)
        offset = start
        while block := fh.read(CHUNK):
            yield pb.UploadContributionRequest(chunk=pb.UploadChunk(offset=offset, data=block))
            offset += len(block)
            if progress:
                progress(offset, size)


def upload(
    client: Any,
    circuit: str,
    path: Path,
    *,
    index: int | None = None,
    progress: Progress | None = None,
    attempts: int = 6,
) -> pb.UploadContributionResponse:
    """Uploads `path` as the caller's contribution, resuming from the committed offset."""
    size = path.stat().st_size
    digest = blake2b_file(path)
    for attempt in range(attempts):
        status = client.ceremony.GetUploadStatus(pb.GetUploadStatusRequest(circuit=circuit))
        same_file = status.size_bytes == size and status.blake2b_512 == digest
        start = status.committed_offset if same_file else 0
        try:
            reply = client.ceremony.UploadContribution(
                _requests(circuit, path, size, digest, start, index, progress), timeout=None
            )
        except Unavailable:
            # Also across a daemon restart: sending the same file again returns the verdict
            # of the upload that already arrived, if it did.
            _pause(attempt)
            continue
        damaged = reply.contribution.transport_fault
        if damaged and reply.participant.status == pb.PARTICIPANT_STATUS_CONTRIBUTING:
            continue  # the daemon got damaged bytes and kept the turn: send it again
        return reply
    raise TransferError(f"upload to {circuit} failed after {attempts} attempts")
