"""coordd_client.contributions: resumable download and upload with progress callbacks."""

from __future__ import annotations

import threading
import time

import pytest

import coordd_client
from coordd_client import contributions
from coordd_client.v1 import ceremony_pb2 as pb
from tests.ceremony.e2e_ceremony.helpers import Ceremonies, blake, upload_messages
from tests.support.server import bearer


@pytest.fixture
def cer(server):
    return Ceremonies(server)


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_download_resumes_a_partial_file_and_upload_resumes_from_the_committed_offset(server, cer, tmp_path):
    ceremony, (circuit,) = cer.open()
    _, token = server.make_user("participant")
    cer.join(ceremony, token)
    with coordd_client.connect(server.target, token=token) as client:
        # A partial download on disk (the first 100 bytes) is continued, not restarted.
        full = tmp_path / "full.zkey"
        contributions.download(client, circuit.name, full)
        partial = tmp_path / "partial.zkey"
        partial.write_bytes(full.read_bytes()[:100])
        seen: list[tuple[int, int]] = []
        digest = contributions.download(
            client, circuit.name, partial, progress=lambda d, t: seen.append((d, t))
        )
        assert partial.read_bytes() == full.read_bytes() and digest == blake(full.read_bytes())
        assert seen[0][0] > 100 and seen[-1] == (full.stat().st_size, full.stat().st_size)

        mine = tmp_path / "mine.zkey"
        mine.write_bytes(full.read_bytes() + bytes(range(256)) * 8000)
        size = mine.stat().st_size
        gate = threading.Event()

        def dropped():  # the connection "drops" after three chunks
            for i, message in enumerate(
                upload_messages(circuit.name, mine.read_bytes(), chunk=contributions.CHUNK)
            ):
                if i == 4:
                    gate.wait(20)
                    return
                yield message

        future = cer.stub.UploadContribution.future(dropped(), metadata=bearer(token))
        status = pb.GetUploadStatusRequest(circuit=circuit.name)
        assert _wait_for(
            lambda: client.ceremony.GetUploadStatus(status).committed_offset == 3 * contributions.CHUNK
        )
        future.cancel()
        gate.set()
        progress: list[int] = []
        reply = contributions.upload(client, circuit.name, mine, progress=lambda d, t: progress.append(d))
        assert reply.contribution.state == pb.CONTRIBUTION_STATE_VALID
        assert reply.contribution.hash_hex == blake(mine.read_bytes()).hex()
        assert progress[0] == 4 * contributions.CHUNK, "only the bytes after the committed offset are sent"
        assert progress[-1] == size


def test_a_corrupted_download_is_detected_and_removed(server, cer, tmp_path):
    ceremony, (circuit,) = cer.open()
    _, token = server.make_user("participant")
    cer.join(ceremony, token)
    with coordd_client.connect(server.target, token=token) as client:
        bad = tmp_path / "bad.zkey"
        bad.write_bytes(b"X" * 10)  # a partial file that does not match the real prefix
        with pytest.raises(contributions.TransferError, match="BLAKE2b-512"):
            contributions.download(client, circuit.name, bad)
        assert not bad.exists()
