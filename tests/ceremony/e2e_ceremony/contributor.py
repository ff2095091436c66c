"""A contributor client process, as a participant would run it, using the generated stubs.

Signs up, joins, waits on WatchQueue for its turn, downloads the latest zkey (checking its
BLAKE2b-512), runs `snarkjs zkey contribute` (or, with --bad, makes garbage), uploads it in
chunks read from disk, then keeps watching until the stream ends. Prints one JSON line.

    python contributor.py --target HOST:PORT --ceremony ceremonies/ID --snarkjs PATH --workdir DIR [--bad]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc

from coordd_client.v1 import auth_pb2, auth_pb2_grpc, ceremony_pb2_grpc
from coordd_client.v1 import ceremony_pb2 as pb

CHUNK = 16 * 1024


def upload_requests(circuit: str, path: Path) -> Iterator[pb.UploadContributionRequest]:
    digest = hashlib.blake2b(path.read_bytes(), digest_size=64).digest()
    size = path.stat().st_size
    yield pb.UploadContributionRequest(
        header=pb.UploadHeader(circuit=circuit, size_bytes=size, blake2b_512=digest)
    )
    with open(path, "rb") as fh:
        offset = 0
        while block := fh.read(CHUNK):
            yield pb.UploadContributionRequest(chunk=pb.UploadChunk(offset=offset, data=block))
            offset += len(block)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--ceremony", required=True)
    parser.add_argument("--snarkjs", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--bad", action="store_true")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    channel = grpc.insecure_channel(args.target)
    auth = auth_pb2_grpc.AuthServiceStub(channel)
    signed = auth.SignUp(
        auth_pb2.SignUpRequest(
            email=f"contrib-{uuid.uuid4().hex[:8]}@example.com", password="contributor password"
        )
    )
    md = (("authorization", f"Bearer {signed.access_token}"),)
    stub = ceremony_pb2_grpc.CeremonyServiceStub(channel)
    me = stub.JoinCeremony(pb.JoinCeremonyRequest(ceremony=args.ceremony), metadata=md).participant
    stream = stub.WatchQueue(pb.WatchQueueRequest(ceremony=args.ceremony), metadata=md, timeout=300)
    positions = []
    for message in stream:
        positions.append(message.position)
        if message.participant.status == pb.PARTICIPANT_STATUS_READY:
            circuit = message.participant.circuit
            break
    else:
        print(json.dumps({"error": "stream ended before my turn"}))
        return 1
    data = b""
    first = None
    for part in stub.DownloadContribution(pb.DownloadContributionRequest(circuit=circuit), metadata=md):
        first = first or part
        data += part.data
    assert first is not None and hashlib.blake2b(data, digest_size=64).digest() == first.blake2b_512
    previous = work / "previous.zkey"
    previous.write_bytes(data)
    stub.ReportProgress(
        pb.ReportProgressRequest(ceremony=args.ceremony, step=pb.CONTRIBUTION_STEP_COMPUTING), metadata=md
    )
    mine = work / "mine.zkey"
    if args.bad:
        mine.write_bytes(os.urandom(len(data)))
    else:
        subprocess.run(
            [
                args.snarkjs,
                "zkey",
                "contribute",
                str(previous),
                str(mine),
                f"--name={me.name}",
                f"-e={uuid.uuid4().hex}",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    stub.ReportProgress(
        pb.ReportProgressRequest(ceremony=args.ceremony, step=pb.CONTRIBUTION_STEP_UPLOADING), metadata=md
    )
    reply = stub.UploadContribution(upload_requests(circuit, mine), metadata=md, timeout=180)
    final_status = ""
    for message in stream:
        final_status = pb.ParticipantStatus.Name(message.participant.status)
    print(
        json.dumps(
            {
                "participant": me.name,
                "state": pb.ContributionState.Name(reply.contribution.state),
                "index": reply.contribution.index,
                "hash": reply.contribution.hash_hex,
                "output": reply.contribution.verifier_output[:300],
                "final_status": final_status,
                "positions": positions,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
