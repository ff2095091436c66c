"""The ceiling of docs/job-store-v2.md, for bench/job_store_ceiling.py: a bare grpc.aio server with
no coordd code, built the way that design says, as cheaply as Python allows.

- Store: the wide `job` row is written once, before the phase, and only read. A claim updates
  the narrow `job_queue` row (partial index on queued jobs only) and inserts one `job_lease` row
  per claim. An acknowledgement is one statement: it deletes the `job_queue` rows that still
  carry the lease (the fence), deletes the lease row and inserts one `job_result` row per job
  from arrays. asyncpg on the serving loop (no thread hop), bigint ids, no events, no caps, no
  fair share, no ledger.
- Transport: one bidirectional stream per worker, raw bytes frames (no protobuf): a frame from
  the worker carries its acks for the last leases and how many jobs it wants next; the answer
  carries the attestations for those acks and the next leases. The stream is trusted once; no
  token is checked per frame.
- Signing: `--sign job` signs each job's in-toto statement (coordd's own `statement_json`,
  PyNaCl Ed25519), one DSSE envelope per job as today. `--sign batch` signs one statement per
  acknowledged frame with one subject per job (the design's item 3).

    python bench/job_store_ceiling_server.py PORT_FILE DATABASE_URL {job,batch} [PORT SLOT PROCESSES]

With PORT, the process binds that port with SO_REUSEPORT on purpose, beside the bench's other
ceiling processes (a `coordd serve --processes` shape); its lease numbers are SLOT modulo
PROCESSES, so the processes' leases never collide.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import sys
from array import array
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
from nacl.signing import SigningKey

from coordd.domain.jobs.attestation import statement_json
from coordd_client.attestation import PAYLOAD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE, pae

METHOD = "/ceiling.Work/Work"
PROVIDER = "0" * 26

SCHEMA = """
CREATE TABLE job (
    id bigint PRIMARY KEY, kind text NOT NULL, submitter text NOT NULL, model_ref text NOT NULL,
    input_data bytea, input_digest text NOT NULL, create_time timestamptz NOT NULL,
    max_attempts int NOT NULL, heartbeat_ms int NOT NULL, budget bigint NOT NULL, labels text[],
    requirements jsonb, idempotency_key text
);
CREATE TABLE job_queue (
    id bigint PRIMARY KEY, priority int NOT NULL, state smallint NOT NULL, lease_seq bigint,
    attempt int NOT NULL
);
CREATE INDEX job_queue_ready ON job_queue (priority DESC, id) WHERE state = 0;
CREATE TABLE job_lease (
    lease_seq bigint PRIMARY KEY, provider text NOT NULL, start_time timestamptz NOT NULL,
    expire_time timestamptz NOT NULL, job_ids bigint[] NOT NULL
);
CREATE TABLE job_envelope (id bigint PRIMARY KEY, payload bytea NOT NULL, sig bytea NOT NULL);
CREATE TABLE job_result (
    id bigint PRIMARY KEY, attempt int NOT NULL, provider text NOT NULL, finish_time timestamptz NOT NULL,
    output_data bytea, output_digest text NOT NULL, sig bytea, envelope_id bigint, subject_index int
);
"""

CLAIM = """
WITH c AS (
    SELECT id FROM job_queue WHERE state = 0 ORDER BY priority DESC, id LIMIT $1 FOR UPDATE SKIP LOCKED
), u AS (
    UPDATE job_queue q SET state = 1, lease_seq = $2, attempt = q.attempt + 1
    WHERE q.id = ANY(ARRAY(SELECT id FROM c)) RETURNING q.id, q.attempt
), l AS (
    INSERT INTO job_lease
    SELECT $2, $3, $4::timestamptz, $4::timestamptz + interval '60 seconds', array_agg(id) FROM u
    HAVING count(*) > 0
)
SELECT u.id, u.attempt, j.kind, j.submitter, j.model_ref, j.input_data, j.input_digest
FROM u JOIN job j USING (id)
"""

# Per-job envelopes: each result row keeps its own signature.
ACK_PER_JOB = """
WITH d AS (
    DELETE FROM job_queue WHERE lease_seq = $1 AND state = 1 AND id = ANY($2::bigint[]) RETURNING id
), l AS (
    DELETE FROM job_lease WHERE lease_seq = $1
)
INSERT INTO job_result (id, attempt, provider, finish_time, output_data, output_digest, sig)
SELECT r.id, r.attempt, $3, $4, r.data, r.digest, r.sig
FROM unnest($2::bigint[], $5::int[], $6::bytea[], $7::text[], $8::bytea[])
    AS r(id, attempt, data, digest, sig)
JOIN d USING (id)
RETURNING id
"""

# One envelope per acknowledged frame: each result row points at its subject in it.
ACK_PER_BATCH = """
WITH d AS (
    DELETE FROM job_queue WHERE lease_seq = $1 AND state = 1 AND id = ANY($2::bigint[]) RETURNING id
), l AS (
    DELETE FROM job_lease WHERE lease_seq = $1
), e AS (
    INSERT INTO job_envelope VALUES ($1, $8, $9)
)
INSERT INTO job_result (id, attempt, provider, finish_time, output_data, output_digest, envelope_id,
                        subject_index)
SELECT r.id, r.attempt, $3, $4, r.data, r.digest, $1, r.n - 1
FROM unnest($2::bigint[], $5::int[], $6::bytea[], $7::text[]) WITH ORDINALITY
    AS r(id, attempt, data, digest, n)
JOIN d USING (id)
RETURNING id
"""


def _unpack_blobs(data: bytes, offset: int, count: int) -> tuple[list[bytes], int]:
    """`count` byte strings written as a uint32 array of lengths, then the bytes."""
    lengths = array("I")
    lengths.frombytes(data[offset : offset + 4 * count])
    offset += 4 * count
    out = []
    for n in lengths:
        out.append(data[offset : offset + n])
        offset += n
    return out, offset


def pack_blobs(items: list[bytes]) -> bytes:
    return array("I", [len(x) for x in items]).tobytes() + b"".join(items)


class Ceiling:
    def __init__(self, pool: asyncpg.Pool, sign: str, slot: int = 0, processes: int = 1) -> None:
        self.pool = pool
        self.sign_each = sign == "job"
        self.key = SigningKey.generate()
        self.lease_seq = slot
        self.step = processes

    async def work(self, frames: Any, context: Any) -> Any:
        """Frame in: uint32 want, uint32 acks, int64 ids[acks], output blobs[acks].
        Frame out: uint32 attestations, payload blobs, signatures (64 bytes each); uint32 leases,
        int64 ids, int32 attempts, input blobs."""
        lease: tuple[int, datetime, dict[int, tuple[Any, ...]]] | None = None
        async for frame in frames:
            want, acks = struct.unpack_from("<II", frame)
            answer = [b"\0\0\0\0"]  # no attestations
            if acks:
                assert lease is not None
                ids = array("q")
                ids.frombytes(frame[8 : 8 + 8 * acks])
                outputs, _ = _unpack_blobs(frame, 8 + 8 * acks, acks)
                answer = await self.acknowledge(lease, list(ids), outputs)
            lease = None
            leases = b"\0\0\0\0"
            if want:
                # Acks are answered at once; only a frame that asks for work alone waits for it.
                lease, leases = await self.claim(want, 20 if not acks else 1)
            yield b"".join(answer) + leases

    async def claim(self, want: int, tries: int) -> tuple[Any, bytes]:
        for attempt in range(tries):  # 20: a long poll of up to a second, as a coordd claim's `wait`
            self.lease_seq += self.step
            seq, now = self.lease_seq, datetime.now(UTC)
            rows = await self.pool.fetch(CLAIM, want, seq, PROVIDER, now)
            if rows:
                break
            if attempt + 1 < tries:
                await asyncio.sleep(0.05)
        else:
            return None, b"\0\0\0\0"
        held = {row[0]: tuple(row) for row in rows}
        ids = array("q", held)
        attempts = array("i", [row[1] for row in rows])
        inputs = pack_blobs([row[5] for row in rows])
        frame = struct.pack("<I", len(rows)) + ids.tobytes() + attempts.tobytes() + inputs
        return (seq, now, held), frame

    async def acknowledge(self, lease: Any, ids: list[int], outputs: list[bytes]) -> list[bytes]:
        seq, started, held = lease
        now = datetime.now(UTC)
        digests = [hashlib.sha256(x).hexdigest() for x in outputs]
        attempts = [held[i][1] for i in ids]
        sign = self.key.sign
        if self.sign_each:
            payloads = []
            sigs = []
            for job_id, digest in zip(ids, digests, strict=True):
                _, attempt, kind, submitter, model_ref, _, input_digest = held[job_id]
                payload = statement_json(
                    str(job_id),
                    kind,
                    submitter,
                    model_ref,
                    input_digest,
                    attempt,
                    PROVIDER,
                    started,
                    now,
                    digest,
                )
                payloads.append(payload)
                sigs.append(sign(pae(PAYLOAD_TYPE, payload)).signature)
            done = await self.pool.fetch(
                ACK_PER_JOB, seq, ids, PROVIDER, now, attempts, outputs, digests, sigs
            )
        else:
            payload = _batch_statement(ids, digests, held, started, now)
            sigs = [sign(pae(PAYLOAD_TYPE, payload)).signature]
            payloads = [payload]
            done = await self.pool.fetch(
                ACK_PER_BATCH, seq, ids, PROVIDER, now, attempts, outputs, digests, payload, sigs[0]
            )
        assert len(done) == len(ids), "a lease was lost"
        return [struct.pack("<I", len(payloads)), pack_blobs(payloads), b"".join(sigs)]


def _batch_statement(
    ids: list[int], digests: list[str], held: dict[int, tuple[Any, ...]], started: datetime, now: datetime
) -> bytes:
    """One in-toto Statement v1 for an acknowledged frame: a subject per job, the predicate listing
    each job's kind, submitter, model, input digest and attempt."""
    jobs = []
    subjects = []
    for job_id, digest in zip(ids, digests, strict=True):
        _, attempt, kind, submitter, model_ref, _, input_digest = held[job_id]
        subjects.append({"name": f"jobs/{job_id}/output", "digest": {"sha256": digest}})
        jobs.append(
            {
                "job": f"jobs/{job_id}",
                "kind": kind,
                "submitter": f"users/{submitter}",
                "modelRef": model_ref,
                "inputDigest": {"sha256": input_digest},
                "attempt": attempt,
            }
        )
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "provider": f"users/{PROVIDER}",
            "startedOn": started.isoformat(),
            "finishedOn": now.isoformat(),
            "jobs": jobs,
        },
    }
    return json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()


async def main(port_file: str, url: str, sign: str, port: int, slot: int, processes: int) -> None:
    pool = await asyncpg.create_pool(url, min_size=8, max_size=8)
    ceiling = Ceiling(pool, sign, slot, processes)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if processes > 1 else 0)])
    handler = grpc.stream_stream_rpc_method_handler(ceiling.work)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("ceiling.Work", {"Work": handler}),)
    )
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    with open(port_file, "w") as fh:
        fh.write(str(port))
    await server.wait_for_termination()


if __name__ == "__main__":
    shared = [int(x) for x in sys.argv[4:7]] or [0, 0, 1]
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], *shared))
