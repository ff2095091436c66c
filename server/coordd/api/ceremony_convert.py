"""CeremonyService conversions: request fields to domain values (names, enums, the spec) and
the rows and views the ceremony domain returns to protobuf messages."""

from __future__ import annotations

from typing import Any

from google.protobuf import duration_pb2

from coordd.api.convert import duration, from_ts, ts
from coordd.core.errors import FieldViolation, InvalidArgument
from coordd.domain import ceremony
from coordd_client.v1 import ceremony_pb2 as pb


def parse_child(name: str, collection: str, field: str) -> tuple[str, str]:
    """`ceremonies/{c}/{collection}/{id}` -> (c, id)."""
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != "ceremonies"
        or parts[2] != collection
        or not all(parts[i] and len(parts[i]) <= 64 for i in (1, 3))
    ):
        raise InvalidArgument(
            f"{field} must look like ceremonies/{{id}}/{collection}/{{id}}, got {name!r}",
            violations=[FieldViolation(field, f"expected ceremonies/{{id}}/{collection}/{{id}}")],
        )
    return parts[1], parts[3]


def enum_name(enum: Any, prefix: str, value: int, field: str, allow_unspecified: bool = False) -> str:
    if value == 0 and allow_unspecified:
        return ""
    if value == 0 or value not in enum.values():
        raise InvalidArgument(
            f"{field} is not a valid value", violations=[FieldViolation(field, "unknown or unspecified")]
        )
    return str(enum.Name(value))[len(prefix) :]


def seconds(value: duration_pb2.Duration) -> float:
    return value.ToTimedelta().total_seconds()


def ceremony_to_proto(c: ceremony.Ceremony) -> pb.Ceremony:
    return pb.Ceremony(
        name=ceremony.ceremony_name(c.id),
        title=c.title,
        description=c.description,
        prefix=c.prefix,
        state=pb.CeremonyState.Value(f"CEREMONY_STATE_{c.state}"),
        coordinator=f"users/{c.coordinator_id}",
        start_time=ts(c.start_time),
        end_time=ts(c.end_time),
        timeout=pb.TimeoutConfig(
            policy=pb.TimeoutPolicy.Value(f"TIMEOUT_POLICY_{c.timeout_policy}"),
            fixed_timeout=duration(c.fixed_timeout_s),
            dynamic_threshold_percent=c.dynamic_threshold_pct,
            dynamic_floor=duration(c.dynamic_floor_s),
            start_window=duration(c.start_window_s),
            penalty=duration(c.penalty_s),
        ),
        verifier=pb.Verifier(
            command=c.verifier_command,
            timeout=duration(c.verify_timeout_s),
            name=c.verifier_name,
            unverified=ceremony.verifiers.unverified(c.verifier_name, c.verifier_command),
        ),
        create_time=ts(c.create_time),
        update_time=ts(c.update_time),
        upload_retries=c.transport_retries,
        eligibility=pb.Eligibility(
            allowed_identities=(c.eligibility or {}).get("allowed", []),
            min_account_age=duration((c.eligibility or {}).get("min_account_age_s", 0)),
            require_ethereum=bool((c.eligibility or {}).get("require_ethereum", False)),
        ),
    )


def _avg(total: float, count: int) -> duration_pb2.Duration | None:
    return duration(total / count) if count else None


def circuit_to_proto(k: ceremony.Circuit, waiting: int = 0) -> pb.Circuit:
    return pb.Circuit(
        name=ceremony.circuit_name(k.ceremony_id, k.id),
        display_name=k.display_name,
        sequence=k.sequence,
        r1cs=pb.BlobInfo(size_bytes=k.r1cs_size, blake2b_512=bytes.fromhex(k.r1cs_hash))
        if k.r1cs_hash
        else None,
        ptau=pb.BlobInfo(size_bytes=k.ptau_size, blake2b_512=bytes.fromhex(k.ptau_hash))
        if k.ptau_hash
        else None,
        max_contribution_size_bytes=k.max_contribution_bytes,
        valid_contributions=k.last_valid_index + 1,
        next_index=k.last_valid_index + 1,
        current_contributor=ceremony.participant_name(k.ceremony_id, k.current_participant)
        if k.current_participant
        else "",
        waiting_count=waiting,
        average_contribution_time=_avg(k.contribution_total_s, k.contribution_count),
        average_verification_time=_avg(k.verification_total_s, k.verification_count),
        beacon_hash_hex=k.beacon_hash,
        beacon_iterations_exponent=k.beacon_iterations,
        finalized=k.finalized,
    )


def participant_to_proto(p: ceremony.Participant | ceremony.ParticipantView) -> pb.Participant:
    """`p` is a Participant row or a ParticipantView: they share these attributes."""
    return pb.Participant(
        name=ceremony.participant_name(p.ceremony_id, p.id),
        user=f"users/{p.user_id}",
        status=pb.ParticipantStatus.Value(f"PARTICIPANT_STATUS_{p.status}"),
        step=pb.ContributionStep.Value(f"CONTRIBUTION_STEP_{p.step}") if p.step else 0,
        circuit=ceremony.circuit_name(p.ceremony_id, p.circuit_id) if p.circuit_id else "",
        completed_circuits=p.completed_circuits,
        timeouts_count=p.timeouts_count,
        deadline=ts(p.due_time),
        create_time=ts(p.create_time),
        update_time=ts(p.update_time),
    )


def contribution_to_proto(ceremony_id: str, k: ceremony.Contribution) -> pb.Contribution:
    receipt = None
    if k.receipt_signature:
        receipt = pb.Receipt(
            payload=bytes(k.receipt_payload), signature=bytes(k.receipt_signature), key_id=k.receipt_key_id
        )
    return pb.Contribution(
        name=ceremony.contribution_name(ceremony_id, k.circuit_id, k.id),
        index=k.index,
        contributor=k.contributor,
        hash_hex=k.hash,
        previous_hash_hex=k.previous_hash,
        size_bytes=k.size,
        state=pb.ContributionState.Value(f"CONTRIBUTION_STATE_{k.state}"),
        verifier_output=k.verifier_output,
        contribution_time=duration(k.contribution_s),
        verification_time=duration(k.verification_s),
        upload_time=ts(k.upload_time),
        verify_time=ts(k.verify_time),
        final=k.is_final,
        receipt=receipt,
        contribution_hash_hex=(k.extra or {}).get("contribution_hash", ""),
        verifier=(k.extra or {}).get("verifier", ""),
        transport_fault=bool((k.extra or {}).get("transport_fault", False)),
    )


def watch_message(cid: str, w: ceremony.WatchState) -> pb.WatchQueueResponse:
    msg = pb.WatchQueueResponse(
        ceremony_state=pb.CeremonyState.Value(f"CEREMONY_STATE_{w.state}"),
        participant=participant_to_proto(w.view),
        deadline=ts(w.view.due_time),
        position=w.position,
        estimated_wait=duration(w.wait) if w.wait is not None else None,
    )
    if w.snap is not None:
        msg.queue_length = w.snap.queue_length
        if w.snap.current is not None:
            msg.current_contributor = ceremony.participant_name(cid, w.snap.current.id)
    return msg


def spec_from_proto(c: pb.Ceremony | pb.CreateCeremonyRequest, fields: set[str]) -> ceremony.CeremonySpec:
    spec = ceremony.CeremonySpec(title=c.title, description=c.description)
    if isinstance(c, pb.CreateCeremonyRequest):
        spec.prefix = c.prefix
    if c.HasField("start_time"):
        spec.start_time = from_ts(c.start_time)
    if c.HasField("end_time"):
        spec.end_time = from_ts(c.end_time)
    if "timeout" in fields:
        t = c.timeout
        spec.timeout_policy = enum_name(
            pb.TimeoutPolicy, "TIMEOUT_POLICY_", t.policy, "timeout.policy", allow_unspecified=True
        )
        spec.fixed_timeout_s = seconds(t.fixed_timeout)
        spec.dynamic_threshold_pct = t.dynamic_threshold_percent
        spec.dynamic_floor_s = seconds(t.dynamic_floor)
        spec.start_window_s = seconds(t.start_window)
        spec.penalty_s = seconds(t.penalty)
    if "verifier" in fields:
        spec.verifier_command = c.verifier.command
        spec.verify_timeout_s = seconds(c.verifier.timeout)
        spec.verifier_name = c.verifier.name
    if "eligibility" in fields:
        spec.allowed_identities = list(c.eligibility.allowed_identities)
        spec.min_account_age_s = seconds(c.eligibility.min_account_age)
        spec.require_ethereum = c.eligibility.require_ethereum
    if "upload_retries" in fields and c.HasField("upload_retries"):
        spec.upload_retries = c.upload_retries
    return spec


# -- WatchQueue as bytes ---------------------------------------------------------------------
# A WatchQueueResponse is sent as the concatenation of three serialized parts (protobuf merges
# concatenated messages field by field; each field is in exactly one part): the circuit's
# shared fields (state, queue length, current contributor), encoded once per snapshot; the
# caller's own fields (participant, deadline, last contribution), encoded once per change of
# its own row; and position + estimated wait, a few bytes encoded per message.

KEEPALIVE_SUFFIX = b"\x40\x01"  # field 8 (keepalive), varint true


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def watch_shared_bytes(cid: str, w: ceremony.WatchState) -> bytes:
    msg = pb.WatchQueueResponse(ceremony_state=pb.CeremonyState.Value(f"CEREMONY_STATE_{w.state}"))
    if w.snap is not None:
        msg.queue_length = w.snap.queue_length
        if w.snap.current is not None:
            msg.current_contributor = ceremony.participant_name(cid, w.snap.current.id)
    return msg.SerializeToString()


def watch_own_bytes(cid: str, w: ceremony.WatchState, last: ceremony.Contribution | None) -> bytes:
    msg = pb.WatchQueueResponse(participant=participant_to_proto(w.view), deadline=ts(w.view.due_time))
    if last is not None:
        msg.last_contribution.CopyFrom(contribution_to_proto(cid, last))
    return msg.SerializeToString()


def watch_position_bytes(position: int, wait: Any) -> bytes:
    """Fields 3 (position) and 7 (estimated_wait, a Duration) as wire bytes."""
    out = b"\x18" + _varint(position) if position > 0 else b""
    if wait is not None:
        total_us = round(wait.total_seconds() * 1_000_000)
        if total_us < 0:  # never expected; protobuf encodes the negative form
            return out + pb.WatchQueueResponse(estimated_wait=duration(wait)).SerializeToString()
        secs, micros = divmod(total_us, 1_000_000)
        body = b"\x08" + _varint(secs) if secs else b""
        if micros:
            body += b"\x10" + _varint(micros * 1000)
        out += b"\x3a" + _varint(len(body)) + body
    return out
