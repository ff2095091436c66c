"""Uploads of contributions and artifacts: who may upload what and when, resumable pending
uploads (what was declared, how much is durably on disk), and what a finished upload
becomes: a contribution in VERIFYING, or a circuit's r1cs/ptau file.

The bytes themselves are written by the api, chunk by chunk, to the blob at the plan's key;
`commit_chunk` records each fsynced offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from coordd.blobs.store import BlobStore
from coordd.core.errors import FailedPrecondition, InvalidArgument, Violations
from coordd.core.principal import Principal, require_owner_or_admin
from coordd.domain.ceremony.emit import participant_event
from coordd.domain.ceremony.lookup import get_circuit, lock_circuit
from coordd.domain.ceremony.names import (
    artifact_key,
    circuit_name,
    contribution_key,
    contribution_name,
    participant_name,
    queue_key,
    upload_key,
)
from coordd.domain.ceremony.queue import require_turn, start_turn
from coordd.domain.ceremony.spec import CONTRIBUTION_KIND, HASH_BYTES, VERIFY_LEASE_S
from coordd.domain.ceremony.states import (
    CONTRIBUTED,
    CONTRIBUTING,
    FINALIZING,
    OPENED,
    PAUSED,
    READY,
    SCHEDULED,
    STEPS,
    VERIFYING,
)
from coordd.runtime import Runtime
from coordd.store.ceremony import leases, queries
from coordd.store.ceremony.models import Ceremony, CeremonyUpload, Circuit, Contribution
from coordd.store.db import Tx


@dataclass(frozen=True)
class UploadPlan:
    upload_id: str
    blob_key: str
    size: int
    committed: int


def blobs_of(rt: Runtime) -> BlobStore:
    return BlobStore.for_data_dir(rt.settings.data_dir)


def discard_uploads(user_id: str, circuit: Circuit | None, blobs: BlobStore | None = None) -> None:
    """Drops the user's pending uploads to the circuit (its turn is over); their temporary
    blobs too when `blobs` is given."""
    if circuit is None:
        return
    for up in queries.uploads_of(circuit.id, user_id):
        queries.delete(up)
        if blobs is not None:
            blobs.delete(up.blob_key)


def _check_header(v: Violations, size: int, digest: bytes, limit: int) -> None:
    if size <= 0:
        v.add("header.size_bytes", "must be positive")
    elif size > limit:
        v.add("header.size_bytes", f"at most {limit} bytes for this circuit")
    if len(digest) != HASH_BYTES:
        v.add("header.blake2b_512", f"{HASH_BYTES} bytes")


def _may_upload_contribution(
    rt: Runtime, tx: Tx, who: Principal, c: Ceremony, circuit: Circuit, index: int | None
) -> None:
    """Raises unless the caller may upload the circuit's next contribution now."""
    expected = circuit.last_valid_index + 1
    if index is not None and index != expected:
        raise FailedPrecondition(
            f"the next contribution to this circuit has index {expected}, not {index}",
            reason="WRONG_INDEX",
            metadata={"expected_index": str(expected)},
        )
    p = queries.find_participant(c.id, who.user_id)
    if expected == 0:
        require_owner_or_admin(who, c.coordinator_id, "ceremony")
        if c.state not in (SCHEDULED, OPENED, PAUSED):
            raise FailedPrecondition("the genesis contribution comes before the ceremony closes")
        if queries.is_verifying(circuit.id):
            raise FailedPrecondition("a genesis contribution is being verified", reason="VERIFYING")
        return
    if p is not None and p.status == FINALIZING and circuit.current_participant == p.id:
        return
    if p is None or circuit.current_participant != p.id:
        raise FailedPrecondition("it is not your turn on this circuit", reason="NOT_YOUR_TURN")
    require_turn(p, circuit, tx.now)
    if p.status == READY:
        start_turn(tx, c, circuit, p)
    if STEPS.index(p.step) < STEPS.index("UPLOADING"):
        p.step = "UPLOADING"
        participant_event(tx, p, "ceremony.participant.progress", {"step": p.step})
    p.update_time = tx.now
    queries.save(p)


def begin_upload(
    rt: Runtime,
    who: Principal,
    ceremony_id: str,
    circuit_id: str,
    kind: str,
    size: int,
    digest: bytes,
    index: int | None,
) -> UploadPlan:
    """Checks the caller may upload, then creates or resumes its pending upload. A header
    matching the pending one resumes at the committed offset; a different one restarts."""
    blobs = blobs_of(rt)
    with rt.store.write() as tx:
        circuit = lock_circuit(rt, circuit_id)
        if circuit.ceremony_id != ceremony_id:
            get_circuit(ceremony_id, circuit_id)
        c = queries.ceremony_by_id(ceremony_id)
        v = Violations()
        limit = circuit.max_contribution_bytes if kind == CONTRIBUTION_KIND else 1 << 40
        _check_header(v, size, digest, limit)
        v.raise_if_any("bad upload header")
        if kind == CONTRIBUTION_KIND:
            _may_upload_contribution(rt, tx, who, c, circuit, index)
        else:
            require_owner_or_admin(who, c.coordinator_id, "ceremony")
            if circuit.last_valid_index >= 0:
                raise FailedPrecondition(
                    "artifacts are fixed once the genesis contribution is in", reason="ARTIFACTS_FIXED"
                )
        hash_hex = digest.hex()
        up = queries.find_upload(circuit.id, who.user_id, kind)
        if up is not None and (up.size != size or up.hash != hash_hex):
            blobs.delete(up.blob_key)
            queries.delete(up)
            up = None
        if up is None:
            up = CeremonyUpload(
                circuit=circuit.id,
                user=who.user_id,
                kind=kind,
                size=size,
                hash=hash_hex,
                committed=0,
                create_time=tx.now,
                update_time=tx.now,
            )
            up.blob_key = upload_key(up.id)
            queries.insert_upload(up)
        # Bytes past the committed offset were written but never recorded: drop them.
        blobs.truncate(up.blob_key, up.committed)
    return UploadPlan(up.id, up.blob_key, up.size, up.committed)


def earlier_upload(who: Principal, ceremony_id: str, circuit_id: str, digest: bytes) -> str | None:
    """The caller's contribution to the circuit with this BLAKE2b-512, being verified or with
    its verdict, when the same file is sent again (a client that lost the reply, e.g. across
    a daemon restart): its id, so the caller gets that verdict. None for a new file, and for
    one rejected as damaged in transport (that one may be sent again)."""
    if len(digest) != HASH_BYTES:
        return None
    get_circuit(ceremony_id, circuit_id)
    p = queries.find_participant(ceremony_id, who.user_id)
    if p is None and not queries.is_verifying(circuit_id):
        return None
    contrib = leases.contribution_with_hash(circuit_id, p.id if p is not None else None, digest.hex())
    if contrib is None or (contrib.extra or {}).get("transport_fault"):
        return None
    if p is None:
        # The coordinator's genesis has no participant row: only the one in flight counts.
        require_owner_or_admin(who, queries.ceremony_by_id(ceremony_id).coordinator_id, "ceremony")
        return contrib.id if contrib.state == VERIFYING else None
    return contrib.id


def commit_chunk(rt: Runtime, upload_id: str, committed: int) -> None:
    """Records bytes already fsynced. Fails when the upload was discarded meanwhile (the
    turn timed out or the caller left)."""
    with rt.store.write() as tx:
        updated = queries.commit_upload(upload_id, committed, tx.now)
    if not updated:
        raise FailedPrecondition("this upload was discarded (turn over?)", reason="UPLOAD_DISCARDED")


def upload_status(who: Principal, ceremony_id: str, circuit_id: str, kind: str) -> CeremonyUpload | None:
    get_circuit(ceremony_id, circuit_id)
    return queries.find_upload(circuit_id, who.user_id, kind)


def _take_upload(who: Principal, upload_id: str) -> CeremonyUpload:
    up = queries.upload_of(upload_id, who.user_id)
    if up is None:
        raise FailedPrecondition("this upload was discarded (turn over?)", reason="UPLOAD_DISCARDED")
    if up.committed != up.size:
        raise FailedPrecondition(
            f"upload incomplete: {up.committed} of {up.size} bytes; resume at GetUploadStatus's offset",
            reason="UPLOAD_INCOMPLETE",
            metadata={"committed_offset": str(up.committed)},
        )
    return up


def finish_artifact_upload(rt: Runtime, who: Principal, ceremony_id: str, upload_id: str) -> Circuit:
    blobs = blobs_of(rt)
    up = _take_upload(who, upload_id)
    size, digest = blobs.digest(up.blob_key)
    with rt.store.write() as tx:
        circuit = lock_circuit(rt, up.circuit_id)
        queries.delete(up)
        if size != up.size or digest != up.hash:
            blobs.delete(up.blob_key)
            raise InvalidArgument(
                "the uploaded file does not match the header's size and BLAKE2b-512",
                reason="HASH_MISMATCH",
            )
        blobs.move(up.blob_key, artifact_key(ceremony_id, circuit.id, up.kind))
        setattr(circuit, f"{up.kind}_size", size)
        setattr(circuit, f"{up.kind}_hash", digest)
        queries.save(circuit)
        tx.emit("ceremony.circuit.artifact", circuit_name(ceremony_id, circuit.id), {"kind": up.kind})
    return circuit


def finish_contribution_upload(rt: Runtime, who: Principal, ceremony_id: str, upload_id: str) -> Contribution:
    """The upload is complete: it becomes a contribution in VERIFYING and its contributor is
    CONTRIBUTED. The size and hash are checked by the verifier, not here."""
    blobs = blobs_of(rt)
    with rt.store.write() as tx:
        up = _take_upload(who, upload_id)
        circuit = lock_circuit(rt, up.circuit_id)
        c = queries.ceremony_by_id(ceremony_id)
        index = circuit.last_valid_index + 1
        # The turn may have ended while the bytes were arriving.
        _may_upload_contribution(rt, tx, who, c, circuit, index)
        p = queries.find_participant(c.id, who.user_id)
        contrib = Contribution(
            circuit=circuit.id,
            participant=p.id if p is not None and index > 0 else None,
            contributor=participant_name(c.id, p.id) if p is not None and index > 0 else "coordinator",
            index=index,
            hash=up.hash,
            previous_hash=circuit.last_valid_hash,
            size=up.size,
            state=VERIFYING,
            is_final=p is not None and p.status == FINALIZING,
            upload_time=tx.now,
            # The lease of this process's verification (runner.py), renewed while it runs.
            verify_due_time=tx.now + timedelta(seconds=VERIFY_LEASE_S),
            extra={"verify_attempts": 1},
        )
        if contrib.is_final:
            contrib.contributor = "coordinator"
            contrib.extra = {
                **contrib.extra,
                "beacon_hash": circuit.beacon_hash,
                "beacon_iterations_exponent": circuit.beacon_iterations,
            }
        contrib.blob_key = contribution_key(c.id, circuit.id, contrib.id)
        if p is not None and p.status == CONTRIBUTING and index > 0:
            contrib.contribution_s = (tx.now - (p.turn_start_time or tx.now)).total_seconds()
            p.status, p.step = CONTRIBUTED, "VERIFYING"
            # No deadline while verifying: the verification's lease is what moves on.
            p.due_time = None
            p.update_time = tx.now
            queries.save(p)
            participant_event(tx, p, "ceremony.participant.contributed", {"circuit": circuit.id})
        queries.insert_contribution(contrib)
        queries.delete(up)
        blobs.move(up.blob_key, contrib.blob_key)
        tx.emit(
            "ceremony.contribution.uploaded",
            contribution_name(c.id, circuit.id, contrib.id),
            {"index": index, "watch_keys": [queue_key(c.id, circuit.id)]},
        )
    return contrib
