"""Verification of an uploaded contribution: the job the verifier runs and recording its
verdict (the chain moves on only with a valid contribution, which a contributor leaves the
circuit with), and the signed receipt.

The verifier itself (`verifier.run`) runs off the event loop, outside any transaction, on
the runner (runner.py), which also resumes verifications a restart interrupted.
"""

from __future__ import annotations

from datetime import timedelta

import structlog

import coordd.domain.ceremony.verifiers as verifiers
from coordd.domain.ceremony.emit import participant_event
from coordd.domain.ceremony.lookup import lock_circuit
from coordd.domain.ceremony.names import artifact_key, contribution_name, queue_key
from coordd.domain.ceremony.queue import advance, promote, release
from coordd.domain.ceremony.receipts import encode, receipt_fields
from coordd.domain.ceremony.spec import circuit_turn_timeout
from coordd.domain.ceremony.states import CONTRIBUTED, CONTRIBUTING, INVALID, VALID, VERIFYING
from coordd.domain.ceremony.uploads import blobs_of
from coordd.domain.ceremony.verifier import VerifyJob, VerifyResult
from coordd.runtime import Runtime
from coordd.store.ceremony import leases, queries
from coordd.store.ceremony.models import Ceremony, Circuit, Contribution, Participant
from coordd.store.db import Tx

log = structlog.get_logger("coordd.ceremony")


def get_contribution(contribution_id: str) -> Contribution:
    """A contribution known to exist (one this replica just uploaded or verified)."""
    return queries.contribution_by_id(contribution_id)


def last_contribution(participant_id: str) -> Contribution | None:
    """A participant's most recent contribution, once verified (WatchQueue shows it)."""
    return leases.last_verified_contribution(participant_id)


def verification_job(rt: Runtime, contribution_id: str) -> VerifyJob | None:
    """What the verifier needs for a contribution still VERIFYING; None otherwise."""
    contrib = queries.find_contribution(contribution_id)
    if contrib is None or contrib.state != VERIFYING:
        return None
    circuit = queries.circuit_by_id(contrib.circuit_id)
    c = queries.ceremony_by_id(circuit.ceremony_id)
    previous = ""
    if circuit.last_valid_contribution:
        prev = queries.find_contribution(circuit.last_valid_contribution)
        previous = prev.blob_key if prev is not None else ""
    command, timeout_s, missing = c.verifier_command, c.verify_timeout_s, ""
    if c.verifier_name and c.verifier_name != verifiers.NONE:
        found = verifiers.declared(rt).get(c.verifier_name)
        if found is None:
            missing = f"the ceremony's verifier {c.verifier_name!r} is not declared on this daemon"
        else:
            command, timeout_s = found.command, found.timeout_s
    return VerifyJob(
        contribution_id=contrib.id,
        blob_key=contrib.blob_key,
        size=contrib.size,
        hash=contrib.hash,
        command=command,
        timeout_s=timeout_s,
        unavailable=missing,
        r1cs_key=artifact_key(c.id, circuit.id, "r1cs") if circuit.r1cs_hash else "",
        ptau_key=artifact_key(c.id, circuit.id, "ptau") if circuit.ptau_hash else "",
        previous_key=previous,
        circuit_name=circuit.display_name,
    )


def finish_verification(rt: Runtime, contribution_id: str, result: VerifyResult) -> Contribution:
    """Records the verifier's verdict. Valid: the contribution joins the chain. Invalid: its
    blob is discarded and the chain stays at the last valid one. Either way it is signed,
    and a contributor moves on to the next circuit. A verdict for a contribution no longer
    VERIFYING (already repaired) changes nothing."""
    blobs = blobs_of(rt)
    discard = ""
    with rt.store.write() as tx:
        contrib = queries.contribution_by_id(contribution_id)
        circuit = lock_circuit(rt, contrib.circuit_id)
        contrib = queries.contribution_by_id(contribution_id)
        if contrib.state != VERIFYING:
            return contrib
        c = queries.ceremony_by_id(circuit.ceremony_id)
        valid = result.valid
        output = result.output
        if valid and contrib.index != circuit.last_valid_index + 1:
            valid, output = False, f"superseded: the chain is already at index {circuit.last_valid_index}"
        contrib.state = VALID if valid else INVALID
        contrib.verifier_output = output
        extra = dict(contrib.extra or {})
        extra["verifier"] = verifiers.label(c.verifier_name, c.verifier_command)
        if result.contribution_hash:
            extra["contribution_hash"] = result.contribution_hash
        if result.transport_fault:
            extra["transport_fault"] = True
        contrib.extra = extra
        contrib.verification_s = result.seconds
        contrib.verify_time = tx.now
        contrib.verify_due_time = None
        if contrib.index > 0:
            circuit.verification_count += 1
            circuit.verification_total_s += result.seconds
        if valid:
            circuit.last_valid_index = contrib.index
            circuit.last_valid_hash = contrib.hash
            circuit.last_valid_contribution = contrib.id
            if contrib.contribution_s is not None and not contrib.is_final:
                circuit.contribution_count += 1
                circuit.contribution_total_s += contrib.contribution_s
            if contrib.is_final:
                circuit.finalized = True
        else:
            discard = contrib.blob_key
        payload = encode(receipt_fields(c, circuit, contrib))
        contrib.receipt_payload = payload
        contrib.receipt_signature = rt.signer.sign(payload)
        contrib.receipt_key_id = rt.signer.key_id
        queries.save(contrib)
        queries.save(circuit)
        tx.emit(
            "ceremony.contribution.verified",
            contribution_name(c.id, circuit.id, contrib.id),
            {"valid": valid, "index": contrib.index, "watch_keys": [queue_key(c.id, circuit.id)]},
        )
        p = queries.participant_by_key(contrib.participant_id) if contrib.participant_id else None
        if p is not None and p.status == CONTRIBUTED and p.circuit_id == circuit.id:
            if result.transport_fault and p.retries_used < c.transport_retries:
                second_chance(tx, c, circuit, p)
            else:
                advance(rt, tx, c, p, circuit)
        elif contrib.is_final and valid:
            coord = queries.participant_by_key(circuit.current_participant)
            if coord is not None:
                coord.circuit, coord.update_time = None, tx.now
                queries.save(coord)
                participant_event(tx, coord, "ceremony.participant.finalized_circuit")
            release(rt, tx, c, circuit, circuit.current_participant or "")
        elif contrib.index == 0 and valid:
            promote(rt, tx, c, circuit)
    if discard:
        blobs.delete(discard)
    return contrib


def second_chance(tx: Tx, c: Ceremony, circuit: Circuit, p: Participant) -> None:
    """The upload was damaged in transport (size or hash mismatch), not an invalid proof: the
    contributor keeps the turn and may send the file again, up to the ceremony's limit. The
    turn's deadline stands, with at least a start window to send it again."""
    p.retries_used += 1
    p.status, p.step = CONTRIBUTING, "UPLOADING"
    turn_end = (p.turn_start_time or tx.now) + circuit_turn_timeout(c, circuit)
    p.due_time = max(turn_end, tx.now + timedelta(seconds=c.start_window_s))
    p.update_time = tx.now
    queries.save(p)
    participant_event(
        tx, p, "ceremony.participant.retry", {"retries_left": c.transport_retries - p.retries_used}
    )
