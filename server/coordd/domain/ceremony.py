"""Ceremony rules: the ceremony and participant state machines, per-circuit FIFO queues with
one current contributor, uploads, verification results, receipts and finalization.

Every change to a circuit's queue happens with that circuit's row locked (FOR UPDATE on
PostgreSQL; SQLite serializes writers), so concurrent joins, timeouts and uploads see one
order. Circuits are always locked in sequence order, so two transactions never wait on
each other in a cycle. Each change emits an event that also names the circuit's queue key,
which is what WatchQueue streams wait on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import peewee
import structlog

from coordd.blobs.store import BlobStore
from coordd.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Violations,
)
from coordd.core.principal import Principal, require_owner_or_admin
from coordd.domain import ceremony_receipts as receipts
from coordd.domain.ceremony_timeouts import DYNAMIC, FIXED, TimeoutRule, average, turn_timeout
from coordd.domain.ceremony_verify import VerifyJob, VerifyResult, check_command
from coordd.runtime import Runtime
from coordd.store.ceremony_models import (
    CLOSED,
    CONTRIBUTED,
    CONTRIBUTING,
    CREATED,
    DONE,
    FINALIZED,
    FINALIZING,
    INVALID,
    OPENED,
    PAUSED,
    READY,
    SCHEDULED,
    TIMEDOUT,
    VALID,
    VERIFYING,
    WAITING,
    Ceremony,
    CeremonyUpload,
    Circuit,
    Contribution,
    Participant,
)
from coordd.store.db import Tx
from coordd.store.paging import Page, PageRequest, keyset_page

log = structlog.get_logger("coordd.ceremony")

PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
HEX_RE = re.compile(r"^(?:[0-9a-f]{2})+$")
DEFAULT_START_WINDOW_S = 60.0
DEFAULT_VERIFY_TIMEOUT_S = 600.0
MAX_VERIFY_TIMEOUT_S = 86400.0
# A verification still unfinished this long after its limit is presumed dead (daemon restart).
VERIFY_GRACE_S = 30.0
DEFAULT_MAX_CONTRIBUTION_BYTES = 1 << 30
MAX_CHUNK_BYTES = 1 << 20
HASH_BYTES = 64

# The current contributor's steps, in the only order they may be reported.
STEPS = ("", "DOWNLOADING", "COMPUTING", "UPLOADING", "VERIFYING")
# Statuses that hold a circuit's turn.
HOLDING = (READY, CONTRIBUTING, CONTRIBUTED, FINALIZING)
CONTRIBUTION_KIND = "contribution"
ARTIFACT_KINDS = ("r1cs", "ptau")


# -- names and keys ------------------------------------------------------------------------


def ceremony_name(ceremony_id: str) -> str:
    return f"ceremonies/{ceremony_id}"


def circuit_name(ceremony_id: str, circuit_id: str) -> str:
    return f"ceremonies/{ceremony_id}/circuits/{circuit_id}"


def participant_name(ceremony_id: str, participant_id: str) -> str:
    return f"ceremonies/{ceremony_id}/participants/{participant_id}"


def contribution_name(ceremony_id: str, circuit_id: str, contribution_id: str) -> str:
    return f"ceremonies/{ceremony_id}/circuits/{circuit_id}/contributions/{contribution_id}"


def queue_key(ceremony_id: str, circuit_id: str) -> str:
    """What a WatchQueue stream waits on: any change to this circuit's queue or turn."""
    return f"{circuit_name(ceremony_id, circuit_id)}/queue"


# -- inputs ----------------------------------------------------------------------------------


@dataclass
class CeremonySpec:
    """A ceremony's settable fields, already converted from the wire (seconds, aware datetimes)."""

    title: str = ""
    description: str = ""
    prefix: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None
    timeout_policy: str = ""
    fixed_timeout_s: float = 0.0
    dynamic_threshold_pct: int = 0
    dynamic_floor_s: float = 0.0
    start_window_s: float = 0.0
    penalty_s: float = 0.0
    verifier_command: str = ""
    verify_timeout_s: float = 0.0


UPDATABLE = ("title", "description", "start_time", "end_time", "timeout", "verifier")


@dataclass(frozen=True)
class UploadPlan:
    upload_id: str
    blob_key: str
    size: int
    committed: int


@dataclass(frozen=True)
class DownloadPlan:
    blob_key: str
    size: int
    hash: str
    index: int


@dataclass(frozen=True)
class ParticipantView:
    """A participant as WatchQueue shows it, read once per queue change for everyone."""

    id: str
    ceremony_id: str
    user_id: str
    status: str
    step: str
    circuit_id: str | None
    completed_circuits: int
    timeouts_count: int
    due_time: datetime | None
    turn_start_time: datetime | None
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True)
class QueueSnapshot:
    """One read of a circuit's queue, shared by every stream watching it."""

    ceremony_id: str
    ceremony_state: str
    circuit_id: str
    current: ParticipantView | None
    per_turn: timedelta | None
    # How long the current contributor's turn has run, as of the read.
    current_elapsed: timedelta | None
    positions: dict[str, int] = field(default_factory=dict)
    participants: dict[str, ParticipantView] = field(default_factory=dict)

    @property
    def queue_length(self) -> int:
        return len(self.positions)


# -- validation ------------------------------------------------------------------------------


def _check_spec(v: Violations, spec: CeremonySpec, fields: set[str], who: Principal, creating: bool) -> None:
    if "title" in fields:
        if not spec.title.strip():
            v.add("title", "required")
        elif len(spec.title) > 200:
            v.add("title", "at most 200 characters")
    if "description" in fields and len(spec.description) > 5000:
        v.add("description", "at most 5000 characters")
    if creating and not PREFIX_RE.match(spec.prefix):
        v.add(
            "prefix", "2-63 characters: lower-case letters, digits and '-', starting with a letter or digit"
        )
    if "start_time" in fields and spec.start_time is None:
        v.add("start_time", "required")
    if "end_time" in fields and spec.end_time is None:
        v.add("end_time", "required")
    if spec.start_time is not None and spec.end_time is not None and spec.end_time <= spec.start_time:
        v.add("end_time", "must be after start_time")
    if "timeout" in fields:
        if spec.timeout_policy not in (FIXED, DYNAMIC):
            v.add("timeout.policy", "FIXED or DYNAMIC")
        if spec.timeout_policy == FIXED and spec.fixed_timeout_s <= 0:
            v.add("timeout.fixed_timeout", "must be positive for FIXED")
        if spec.timeout_policy == DYNAMIC:
            if spec.dynamic_floor_s <= 0:
                v.add(
                    "timeout.dynamic_floor", "must be positive for DYNAMIC (the first turn needs a deadline)"
                )
            if not 0 <= spec.dynamic_threshold_pct <= 1000:
                v.add("timeout.dynamic_threshold_percent", "0..1000")
        if spec.start_window_s < 0:
            v.add("timeout.start_window", "must not be negative")
        if spec.penalty_s < 0:
            v.add("timeout.penalty", "must not be negative")
    if "verifier" in fields:
        if spec.verifier_command:
            problem = check_command(spec.verifier_command)
            if problem:
                v.add("verifier.command", problem)
        if not 0 <= spec.verify_timeout_s <= MAX_VERIFY_TIMEOUT_S:
            v.add("verifier.timeout", f"0..{MAX_VERIFY_TIMEOUT_S:g} seconds")
    v.raise_if_any()
    if "verifier" in fields and spec.verifier_command and not who.is_admin:
        raise PermissionDenied(
            "an external verifier command runs on the daemon's host: only an admin may set one",
            reason="VERIFIER_COMMAND_NEEDS_ADMIN",
        )


def _apply_spec(c: Ceremony, spec: CeremonySpec, fields: set[str]) -> None:
    if "title" in fields:
        c.title = spec.title
    if "description" in fields:
        c.description = spec.description
    if "start_time" in fields:
        c.start_time = spec.start_time
    if "end_time" in fields:
        c.end_time = spec.end_time
    if "timeout" in fields:
        c.timeout_policy = spec.timeout_policy
        c.fixed_timeout_s = spec.fixed_timeout_s
        c.dynamic_threshold_pct = spec.dynamic_threshold_pct
        c.dynamic_floor_s = spec.dynamic_floor_s
        c.start_window_s = spec.start_window_s or DEFAULT_START_WINDOW_S
        c.penalty_s = spec.penalty_s
    if "verifier" in fields:
        c.verifier_command = spec.verifier_command
        c.verify_timeout_s = spec.verify_timeout_s or DEFAULT_VERIFY_TIMEOUT_S
    c.state_due_time = c.start_time


def rule_of(c: Ceremony) -> TimeoutRule:
    return TimeoutRule(
        c.timeout_policy,
        timedelta(seconds=c.fixed_timeout_s),
        c.dynamic_threshold_pct,
        timedelta(seconds=c.dynamic_floor_s),
    )


def circuit_turn_timeout(c: Ceremony, circuit: Circuit) -> timedelta:
    return turn_timeout(rule_of(c), average(circuit.contribution_total_s, circuit.contribution_count))


# -- ceremonies ------------------------------------------------------------------------------


def _ceremony_event(tx: Tx, c: Ceremony, type_: str, data: dict[str, Any] | None = None) -> None:
    keys = [
        queue_key(c.id, k) for (k,) in Circuit.select(Circuit.id).where(Circuit.ceremony == c.id).tuples()
    ]
    tx.emit(type_, ceremony_name(c.id), {**(data or {}), "state": c.state, "watch_keys": keys})


def create_ceremony(rt: Runtime, who: Principal, spec: CeremonySpec) -> Ceremony:
    _check_spec(Violations(), spec, set(UPDATABLE), who, creating=True)
    try:
        with rt.store.write() as tx:
            c = Ceremony(
                coordinator=who.user_id,
                prefix=spec.prefix,
                state=SCHEDULED,
                create_time=tx.now,
                update_time=tx.now,
            )
            _apply_spec(c, spec, set(UPDATABLE))
            c.save(force_insert=True)
            tx.emit("ceremony.created", ceremony_name(c.id), {"prefix": c.prefix})
    except peewee.IntegrityError:
        raise AlreadyExists(
            f"a ceremony with prefix {spec.prefix!r} already exists",
            reason="PREFIX_TAKEN",
            metadata={"prefix": spec.prefix},
        ) from None
    return c


def get_ceremony(ceremony_id: str) -> Ceremony:
    c = Ceremony.get_or_none(Ceremony.id == ceremony_id)
    if c is None:
        name = ceremony_name(ceremony_id)
        raise NotFound(f"{name} not found", metadata={"resource": name})
    return c


def list_ceremonies(page: PageRequest, state: str) -> Page[Ceremony]:
    query = Ceremony.select()
    if state:
        query = query.where(Ceremony.state == state)
    return keyset_page(query, Ceremony.id, page, filters={"state": state})


def _owned(rt: Runtime, who: Principal, ceremony_id: str, lock: bool = False) -> Ceremony:
    query = Ceremony.select().where(Ceremony.id == ceremony_id)
    if lock and rt.store.is_postgres:
        query = query.for_update()
    c = query.first()
    if c is None:
        name = ceremony_name(ceremony_id)
        raise NotFound(f"{name} not found", metadata={"resource": name})
    require_owner_or_admin(who, c.coordinator_id, "ceremony")
    return c


def _require_state(c: Ceremony, allowed: tuple[str, ...], action: str) -> None:
    if c.state not in allowed:
        raise FailedPrecondition(
            f"cannot {action} a ceremony that is {c.state} (needs {' or '.join(allowed)})",
            reason="CEREMONY_STATE",
            metadata={"state": c.state},
        )


def update_ceremony(
    rt: Runtime, who: Principal, ceremony_id: str, spec: CeremonySpec, mask: list[str]
) -> Ceremony:
    v = Violations()
    if not mask:
        v.add("update_mask", "name at least one field")
    for index, path in enumerate(mask):
        if path not in UPDATABLE:
            v.add(f"update_mask.paths[{index}]", f"not updatable (one of: {', '.join(UPDATABLE)})")
    v.raise_if_any()
    fields = set(mask)
    with rt.store.write() as tx:
        c = _owned(rt, who, ceremony_id, lock=True)
        _require_state(c, (SCHEDULED,), "update")
        merged = CeremonySpec(
            start_time=spec.start_time if "start_time" in fields else c.start_time,
            end_time=spec.end_time if "end_time" in fields else c.end_time,
        )
        for name in ("title", "description"):
            setattr(merged, name, getattr(spec, name))
        for name in ("timeout_policy", "fixed_timeout_s", "dynamic_threshold_pct", "dynamic_floor_s"):
            setattr(merged, name, getattr(spec, name))
        merged.start_window_s, merged.penalty_s = spec.start_window_s, spec.penalty_s
        merged.verifier_command, merged.verify_timeout_s = spec.verifier_command, spec.verify_timeout_s
        _check_spec(Violations(), merged, fields | {"start_time", "end_time"}, who, creating=False)
        _apply_spec(c, merged, fields)
        c.update_time = tx.now
        c.save()
        _ceremony_event(tx, c, "ceremony.updated", {"fields": sorted(fields)})
    return c


def pause_ceremony(rt: Runtime, who: Principal, ceremony_id: str) -> Ceremony:
    with rt.store.write() as tx:
        c = _owned(rt, who, ceremony_id, lock=True)
        _require_state(c, (OPENED,), "pause")
        c.state, c.update_time = PAUSED, tx.now
        c.save()
        _ceremony_event(tx, c, "ceremony.paused")
    return c


def resume_ceremony(rt: Runtime, who: Principal, ceremony_id: str) -> Ceremony:
    with rt.store.write() as tx:
        c = _owned(rt, who, ceremony_id, lock=True)
        _require_state(c, (PAUSED,), "resume")
        c.state, c.update_time = OPENED, tx.now
        c.save()
        _ceremony_event(tx, c, "ceremony.resumed")
        for circuit in _circuits(rt, c.id, lock=True):
            _promote(rt, tx, c, circuit)
    return c


def close_ceremony(rt: Runtime, who: Principal, ceremony_id: str) -> Ceremony:
    with rt.store.write() as tx:
        c = _owned(rt, who, ceremony_id, lock=True)
        _require_state(c, (SCHEDULED, OPENED, PAUSED), "close")
        _close(tx, c)
    return c


def _close(tx: Tx, c: Ceremony) -> None:
    c.state, c.update_time, c.state_due_time = CLOSED, tx.now, None
    c.save()
    _ceremony_event(tx, c, "ceremony.closed")


def _open(rt: Runtime, tx: Tx, c: Ceremony) -> None:
    """SCHEDULED -> OPENED: early joiners enter the first circuit's queue in join order."""
    c.state, c.update_time, c.state_due_time = OPENED, tx.now, c.end_time
    c.save()
    _ceremony_event(tx, c, "ceremony.opened")
    circuits = _circuits(rt, c.id, lock=True)
    if circuits:
        early = (
            Participant.select()
            .where((Participant.ceremony == c.id) & (Participant.status == CREATED))
            .order_by(Participant.create_time, Participant.id)
        )
        for p in early:
            _enter_queue(tx, c, p, circuits[0])
        _promote(rt, tx, c, circuits[0])


# -- circuits --------------------------------------------------------------------------------


def _circuits(rt: Runtime, ceremony_id: str, lock: bool = False) -> list[Circuit]:
    query = Circuit.select().where(Circuit.ceremony == ceremony_id).order_by(Circuit.sequence)
    if lock and rt.store.is_postgres:
        query = query.for_update()
    return list(query)


def _lock_circuit(rt: Runtime, circuit_id: str) -> Circuit:
    query = Circuit.select().where(Circuit.id == circuit_id)
    if rt.store.is_postgres:
        query = query.for_update()
    circuit = query.first()
    if circuit is None:
        raise NotFound(f"circuit {circuit_id} not found", metadata={"resource": f"circuits/{circuit_id}"})
    return circuit


def add_circuit(rt: Runtime, who: Principal, ceremony_id: str, display_name: str, max_bytes: int) -> Circuit:
    v = Violations()
    if not display_name.strip():
        v.add("display_name", "required")
    elif len(display_name) > 100:
        v.add("display_name", "at most 100 characters")
    if max_bytes < 0:
        v.add("max_contribution_size_bytes", "must not be negative")
    v.raise_if_any()
    with rt.store.write() as tx:
        c = _owned(rt, who, ceremony_id, lock=True)
        _require_state(c, (SCHEDULED,), "add a circuit to")
        last = Circuit.select(peewee.fn.MAX(Circuit.sequence)).where(Circuit.ceremony == c.id).scalar() or 0
        circuit = Circuit.create(
            ceremony=c.id,
            display_name=display_name,
            sequence=last + 1,
            max_contribution_bytes=max_bytes or DEFAULT_MAX_CONTRIBUTION_BYTES,
            create_time=tx.now,
        )
        tx.emit("ceremony.circuit.added", circuit_name(c.id, circuit.id), {"sequence": circuit.sequence})
    return circuit


def get_circuit(ceremony_id: str, circuit_id: str) -> Circuit:
    circuit = Circuit.get_or_none((Circuit.id == circuit_id) & (Circuit.ceremony == ceremony_id))
    if circuit is None:
        name = circuit_name(ceremony_id, circuit_id)
        raise NotFound(f"{name} not found", metadata={"resource": name})
    return circuit


def list_circuits(ceremony_id: str) -> list[Circuit]:
    get_ceremony(ceremony_id)
    return list(Circuit.select().where(Circuit.ceremony == ceremony_id).order_by(Circuit.sequence))


def waiting_counts(circuit_ids: list[str]) -> dict[str, int]:
    rows = (
        Participant.select(Participant.circuit, peewee.fn.COUNT(Participant.id))
        .where(Participant.circuit.in_(circuit_ids) & (Participant.status == WAITING))
        .group_by(Participant.circuit)
        .tuples()
    )
    return {circuit_id: count for circuit_id, count in rows}


# -- queues ----------------------------------------------------------------------------------


def _participant_event(tx: Tx, p: Participant, type_: str, data: dict[str, Any] | None = None) -> None:
    keys = [queue_key(p.ceremony_id, p.circuit_id)] if p.circuit_id else []
    keys.append(ceremony_name(p.ceremony_id) + "/participants")
    tx.emit(
        type_,
        participant_name(p.ceremony_id, p.id),
        {**(data or {}), "status": p.status, "watch_keys": keys},
    )


def _enter_queue(tx: Tx, c: Ceremony, p: Participant, circuit: Circuit) -> None:
    """Puts `p` at the end of `circuit`'s queue (the circuit row is locked by the caller)."""
    circuit.queue_counter += 1
    Circuit.update(queue_counter=circuit.queue_counter).where(Circuit.id == circuit.id).execute()
    p.circuit = circuit.id
    p.status, p.step, p.queue_seq = WAITING, "", circuit.queue_counter
    p.due_time = p.turn_start_time = None
    p.update_time = tx.now
    p.save()
    _participant_event(tx, p, "ceremony.participant.waiting", {"circuit": circuit.id})


def _promote(rt: Runtime, tx: Tx, c: Ceremony, circuit: Circuit) -> Participant | None:
    """Gives a free turn to the head of the queue, when the ceremony is OPENED and the
    circuit has a valid genesis and is not finalized."""
    if c.state != OPENED or circuit.current_participant or circuit.last_valid_index < 0 or circuit.finalized:
        return None
    head = (
        Participant.select()
        .where((Participant.circuit == circuit.id) & (Participant.status == WAITING))
        .order_by(Participant.queue_seq)
        .first()
    )
    if head is None:
        return None
    head.status, head.step = READY, ""
    head.due_time = tx.now + timedelta(seconds=c.start_window_s)
    head.update_time = tx.now
    head.save()
    circuit.current_participant = head.id
    Circuit.update(current_participant=head.id).where(Circuit.id == circuit.id).execute()
    _participant_event(tx, head, "ceremony.participant.ready", {"circuit": circuit.id})
    return head


def _release(rt: Runtime, tx: Tx, c: Ceremony, circuit: Circuit, participant_id: str) -> None:
    """Frees the circuit's turn held by `participant_id` and promotes the next at once."""
    if circuit.current_participant == participant_id:
        circuit.current_participant = None
        Circuit.update(current_participant=None).where(Circuit.id == circuit.id).execute()
    _promote(rt, tx, c, circuit)


def _next_circuit(c: Ceremony, after_sequence: int) -> Circuit | None:
    return (
        Circuit.select()
        .where((Circuit.ceremony == c.id) & (Circuit.sequence > after_sequence))
        .order_by(Circuit.sequence)
        .first()
    )


def _advance(rt: Runtime, tx: Tx, c: Ceremony, p: Participant, circuit: Circuit) -> None:
    """`p` is finished with `circuit`: the turn passes on, `p` joins the next circuit's queue
    or is DONE."""
    p.completed_circuits += 1
    _release(rt, tx, c, circuit, p.id)
    nxt = _next_circuit(c, circuit.sequence)
    if nxt is None or p.left:
        p.status, p.step, p.circuit = DONE, "", None
        p.due_time = p.turn_start_time = None
        p.update_time = tx.now
        p.save()
        tx.emit(
            "ceremony.participant.done",
            participant_name(c.id, p.id),
            {"status": DONE, "watch_keys": [queue_key(c.id, circuit.id)]},
        )
        return
    nxt = _lock_circuit(rt, nxt.id)
    tx.emit(
        "ceremony.participant.moved",
        participant_name(c.id, p.id),
        {"status": p.status, "watch_keys": [queue_key(c.id, circuit.id)]},
    )
    _enter_queue(tx, c, p, nxt)
    _promote(rt, tx, c, nxt)


# -- participants ----------------------------------------------------------------------------


def _mine(ceremony_id: str, who: Principal) -> Participant:
    p = Participant.get_or_none((Participant.ceremony == ceremony_id) & (Participant.user == who.user_id))
    if p is None:
        get_ceremony(ceremony_id)
        raise NotFound(
            f"you have not joined {ceremony_name(ceremony_id)}",
            reason="NOT_A_PARTICIPANT",
            metadata={"resource": ceremony_name(ceremony_id)},
        )
    return p


def _lock_mine(rt: Runtime, ceremony_id: str, who: Principal) -> tuple[Participant, Circuit | None]:
    """The caller's participant with its circuit locked. The circuit is locked first (the
    global lock order), then the participant is re-read; a move in between is retried."""
    for _ in range(5):
        p = _mine(ceremony_id, who)
        circuit = _lock_circuit(rt, p.circuit_id) if p.circuit_id else None
        query = Participant.select().where(Participant.id == p.id)
        if rt.store.is_postgres:
            query = query.for_update()
        fresh = query.first()
        if fresh is not None and fresh.circuit_id == p.circuit_id:
            return fresh, circuit
    raise FailedPrecondition("your participation changed while handling the call; retry", reason="RETRY")


def join(rt: Runtime, who: Principal, ceremony_id: str) -> Participant:
    try:
        with rt.store.write() as tx:
            c = Ceremony.select().where(Ceremony.id == ceremony_id)
            c = (c.for_update() if rt.store.is_postgres else c).first()
            if c is None:
                get_ceremony(ceremony_id)
            assert c is not None
            _require_state(c, (SCHEDULED, OPENED, PAUSED), "join")
            circuits = _circuits(rt, c.id)
            if c.state != SCHEDULED and not circuits:
                raise FailedPrecondition("this ceremony has no circuits", reason="NO_CIRCUITS")
            p = Participant.create(
                ceremony=c.id, user=who.user_id, status=CREATED, create_time=tx.now, update_time=tx.now
            )
            _participant_event(tx, p, "ceremony.participant.joined")
            if c.state != SCHEDULED:
                # Only the first circuit's queue changes: only its row is locked.
                first = _lock_circuit(rt, circuits[0].id)
                _enter_queue(tx, c, p, first)
                _promote(rt, tx, c, first)
                p = Participant.get_by_id(p.id)
    except peewee.IntegrityError:
        raise AlreadyExists(
            "you have already joined this ceremony",
            reason="ALREADY_JOINED",
            metadata={"resource": ceremony_name(ceremony_id)},
        ) from None
    return p


def get_participation(who: Principal, ceremony_id: str) -> Participant:
    return _mine(ceremony_id, who)


def leave(rt: Runtime, who: Principal, ceremony_id: str) -> Participant:
    """Leaving ends the participation (DONE, marked left); a held turn passes on at once. A
    contribution already being verified is still recorded."""
    with rt.store.write() as tx:
        p, circuit = _lock_mine(rt, ceremony_id, who)
        if p.status in (DONE, FINALIZING, FINALIZED):
            raise FailedPrecondition(f"cannot leave while {p.status}", reason="PARTICIPANT_STATUS")
        c = Ceremony.get_by_id(ceremony_id)
        p.left = True
        if p.status == CONTRIBUTED:
            # The contribution under verification is still recorded; then the participant is DONE.
            p.update_time = tx.now
            p.save()
            _participant_event(tx, p, "ceremony.participant.leaving")
            return p
        _discard_uploads(p.user_id, circuit)
        old_status = p.status
        p.status, p.step, p.circuit = DONE, "", None
        p.due_time = p.turn_start_time = None
        p.update_time = tx.now
        p.save()
        keys = [queue_key(c.id, circuit.id)] if circuit else []
        tx.emit(
            "ceremony.participant.left",
            participant_name(c.id, p.id),
            {"status": DONE, "was": old_status, "watch_keys": keys},
        )
        if circuit is not None:
            _release(rt, tx, c, circuit, p.id)
    return p


def list_participants(who: Principal, ceremony_id: str, page: PageRequest, status: str) -> Page[Participant]:
    c = get_ceremony(ceremony_id)
    require_owner_or_admin(who, c.coordinator_id, "ceremony")
    query = Participant.select().where(Participant.ceremony == ceremony_id)
    if status:
        query = query.where(Participant.status == status)
    return keyset_page(query, Participant.id, page, filters={"c": ceremony_id, "status": status})


def _start_turn(tx: Tx, c: Ceremony, circuit: Circuit, p: Participant) -> None:
    """READY -> CONTRIBUTING: the turn's clock starts and its deadline is set."""
    p.status = CONTRIBUTING
    p.turn_start_time = tx.now
    p.due_time = tx.now + circuit_turn_timeout(c, circuit)
    _participant_event(tx, p, "ceremony.participant.contributing", {"circuit": circuit.id})


def _require_turn(p: Participant, circuit: Circuit | None, now: datetime) -> Circuit:
    if circuit is None or circuit.current_participant != p.id or p.status not in (READY, CONTRIBUTING):
        raise FailedPrecondition("it is not your turn", reason="NOT_YOUR_TURN", metadata={"status": p.status})
    if p.due_time is not None and p.due_time <= now:
        raise FailedPrecondition(
            "your turn's deadline has passed", reason="DEADLINE_PASSED", metadata={"status": p.status}
        )
    return circuit


def report_progress(rt: Runtime, who: Principal, ceremony_id: str, step: str) -> Participant:
    if step not in STEPS[1:4]:
        v = Violations()
        v.add("step", "DOWNLOADING, COMPUTING or UPLOADING")
        v.raise_if_any()
    with rt.store.write() as tx:
        p, circuit = _lock_mine(rt, ceremony_id, who)
        circuit = _require_turn(p, circuit, tx.now)
        if STEPS.index(step) <= STEPS.index(p.step):
            raise FailedPrecondition(
                f"progress only moves forward: {p.step or 'nothing'} -> {step} is not",
                reason="STEP_NOT_FORWARD",
                metadata={"step": p.step},
            )
        c = Ceremony.get_by_id(ceremony_id)
        if p.status == READY:
            _start_turn(tx, c, circuit, p)
        p.step, p.update_time = step, tx.now
        p.save()
        _participant_event(tx, p, "ceremony.participant.progress", {"step": step})
    return p


# -- downloads and uploads -------------------------------------------------------------------


def contribution_key(ceremony_id: str, circuit_id: str, contribution_id: str) -> str:
    return f"ceremonies/{ceremony_id}/{circuit_id}/{contribution_id}.zkey"


def artifact_key(ceremony_id: str, circuit_id: str, kind: str) -> str:
    return f"ceremonies/{ceremony_id}/{circuit_id}/{kind}"


def _upload_key(upload_id: str) -> str:
    return f"tmp/{upload_id}.part"


def open_download(
    rt: Runtime, who: Principal, ceremony_id: str, circuit_id: str, index: int | None
) -> DownloadPlan:
    """Who may read a contribution: the circuit's current contributor (READY starts its turn),
    the finalizing coordinator, the ceremony's coordinator or an admin, and anyone once the
    circuit is finalized."""
    with rt.store.write() as tx:
        circuit = _lock_circuit(rt, circuit_id)
        if circuit.ceremony_id != ceremony_id:
            get_circuit(ceremony_id, circuit_id)
        c = Ceremony.get_by_id(ceremony_id)
        p = Participant.get_or_none((Participant.ceremony == c.id) & (Participant.user == who.user_id))
        holder = p is not None and circuit.current_participant == p.id
        if holder and p is not None and p.status in (READY, CONTRIBUTING):
            _require_turn(p, circuit, tx.now)
            if p.status == READY:
                _start_turn(tx, c, circuit, p)
                p.step = "DOWNLOADING"
                p.update_time = tx.now
                p.save()
                _participant_event(tx, p, "ceremony.participant.progress", {"step": p.step})
        elif not (holder or circuit.finalized or who.is_admin or who.user_id == c.coordinator_id):
            raise PermissionDenied(
                "only the circuit's current contributor or the coordinator may download now",
                reason="NOT_YOUR_TURN",
            )
        wanted = circuit.last_valid_index if index is None else index
        found = (
            Contribution.select()
            .where(
                (Contribution.circuit == circuit.id)
                & (Contribution.index == wanted)
                & (Contribution.state == VALID)
            )
            .first()
        )
        if found is None:
            raise NotFound(
                f"no valid contribution {wanted} on this circuit",
                reason="NO_CONTRIBUTION",
                metadata={"index": str(wanted)},
            )
    return DownloadPlan(found.blob_key, found.size, found.hash, found.index)


def _check_header(v: Violations, size: int, digest: bytes, limit: int) -> None:
    if size <= 0:
        v.add("header.size_bytes", "must be positive")
    elif size > limit:
        v.add("header.size_bytes", f"at most {limit} bytes for this circuit")
    if len(digest) != HASH_BYTES:
        v.add("header.blake2b_512", f"{HASH_BYTES} bytes")


def _discard_uploads(user_id: str, circuit: Circuit | None, blobs: BlobStore | None = None) -> None:
    if circuit is None:
        return
    for up in CeremonyUpload.select().where(
        (CeremonyUpload.circuit == circuit.id) & (CeremonyUpload.user == user_id)
    ):
        up.delete_instance()
        if blobs is not None:
            blobs.delete(up.blob_key)


def blobs_of(rt: Runtime) -> BlobStore:
    return BlobStore.for_data_dir(rt.settings.data_dir)


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
    p = Participant.get_or_none((Participant.ceremony == c.id) & (Participant.user == who.user_id))
    if expected == 0:
        require_owner_or_admin(who, c.coordinator_id, "ceremony")
        if c.state not in (SCHEDULED, OPENED, PAUSED):
            raise FailedPrecondition("the genesis contribution comes before the ceremony closes")
        if (
            Contribution.select()
            .where((Contribution.circuit == circuit.id) & (Contribution.state == VERIFYING))
            .exists()
        ):
            raise FailedPrecondition("a genesis contribution is being verified", reason="VERIFYING")
        return
    if p is not None and p.status == FINALIZING and circuit.current_participant == p.id:
        return
    if p is None or circuit.current_participant != p.id:
        raise FailedPrecondition("it is not your turn on this circuit", reason="NOT_YOUR_TURN")
    _require_turn(p, circuit, tx.now)
    if p.status == READY:
        _start_turn(tx, c, circuit, p)
    if STEPS.index(p.step) < STEPS.index("UPLOADING"):
        p.step = "UPLOADING"
        _participant_event(tx, p, "ceremony.participant.progress", {"step": p.step})
    p.update_time = tx.now
    p.save()


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
        circuit = _lock_circuit(rt, circuit_id)
        if circuit.ceremony_id != ceremony_id:
            get_circuit(ceremony_id, circuit_id)
        c = Ceremony.get_by_id(ceremony_id)
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
        up = CeremonyUpload.get_or_none(
            (CeremonyUpload.circuit == circuit.id)
            & (CeremonyUpload.user == who.user_id)
            & (CeremonyUpload.kind == kind)
        )
        if up is not None and (up.size != size or up.hash != hash_hex):
            blobs.delete(up.blob_key)
            up.delete_instance()
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
            up.blob_key = _upload_key(up.id)
            up.save(force_insert=True)
        # Bytes past the committed offset were written but never recorded: drop them.
        blobs.truncate(up.blob_key, up.committed)
    return UploadPlan(up.id, up.blob_key, up.size, up.committed)


def commit_chunk(rt: Runtime, upload_id: str, committed: int) -> None:
    """Records bytes already fsynced. Fails when the upload was discarded meanwhile (the
    turn timed out or the caller left)."""
    with rt.store.write() as tx:
        updated = (
            CeremonyUpload.update(committed=committed, update_time=tx.now)
            .where(CeremonyUpload.id == upload_id)
            .execute()
        )
    if not updated:
        raise FailedPrecondition("this upload was discarded (turn over?)", reason="UPLOAD_DISCARDED")


def upload_status(who: Principal, ceremony_id: str, circuit_id: str, kind: str) -> CeremonyUpload | None:
    get_circuit(ceremony_id, circuit_id)
    return CeremonyUpload.get_or_none(
        (CeremonyUpload.circuit == circuit_id)
        & (CeremonyUpload.user == who.user_id)
        & (CeremonyUpload.kind == kind)
    )


def _take_upload(who: Principal, upload_id: str) -> CeremonyUpload:
    up = CeremonyUpload.get_or_none((CeremonyUpload.id == upload_id) & (CeremonyUpload.user == who.user_id))
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
        circuit = _lock_circuit(rt, up.circuit_id)
        up.delete_instance()
        if size != up.size or digest != up.hash:
            blobs.delete(up.blob_key)
            raise InvalidArgument(
                "the uploaded file does not match the header's size and BLAKE2b-512",
                reason="HASH_MISMATCH",
            )
        blobs.move(up.blob_key, artifact_key(ceremony_id, circuit.id, up.kind))
        setattr(circuit, f"{up.kind}_size", size)
        setattr(circuit, f"{up.kind}_hash", digest)
        circuit.save()
        tx.emit("ceremony.circuit.artifact", circuit_name(ceremony_id, circuit.id), {"kind": up.kind})
    return circuit


def finish_contribution_upload(rt: Runtime, who: Principal, ceremony_id: str, upload_id: str) -> Contribution:
    """The upload is complete: it becomes a contribution in VERIFYING and its contributor is
    CONTRIBUTED. The size and hash are checked by the verifier, not here."""
    blobs = blobs_of(rt)
    with rt.store.write() as tx:
        up = _take_upload(who, upload_id)
        circuit = _lock_circuit(rt, up.circuit_id)
        c = Ceremony.get_by_id(ceremony_id)
        index = circuit.last_valid_index + 1
        # The turn may have ended while the bytes were arriving.
        _may_upload_contribution(rt, tx, who, c, circuit, index)
        p = Participant.get_or_none((Participant.ceremony == c.id) & (Participant.user == who.user_id))
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
            verify_due_time=tx.now + timedelta(seconds=c.verify_timeout_s + VERIFY_GRACE_S),
            extra={},
        )
        if contrib.is_final:
            contrib.contributor = "coordinator"
            contrib.extra = {
                "beacon_hash": circuit.beacon_hash,
                "beacon_iterations_exponent": circuit.beacon_iterations,
            }
        contrib.blob_key = contribution_key(c.id, circuit.id, contrib.id)
        if p is not None and p.status == CONTRIBUTING and index > 0:
            contrib.contribution_s = (tx.now - (p.turn_start_time or tx.now)).total_seconds()
            p.status, p.step = CONTRIBUTED, "VERIFYING"
            p.due_time = contrib.verify_due_time
            p.update_time = tx.now
            p.save()
            _participant_event(tx, p, "ceremony.participant.contributed", {"circuit": circuit.id})
        contrib.save(force_insert=True)
        up.delete_instance()
        blobs.move(up.blob_key, contrib.blob_key)
        tx.emit(
            "ceremony.contribution.uploaded",
            contribution_name(c.id, circuit.id, contrib.id),
            {"index": index, "watch_keys": [queue_key(c.id, circuit.id)]},
        )
    return contrib


# -- verification ----------------------------------------------------------------------------


def verification_job(rt: Runtime, contribution_id: str) -> VerifyJob | None:
    contrib = Contribution.get_or_none(Contribution.id == contribution_id)
    if contrib is None or contrib.state != VERIFYING:
        return None
    circuit = Circuit.get_by_id(contrib.circuit_id)
    c = Ceremony.get_by_id(circuit.ceremony_id)
    previous = ""
    if circuit.last_valid_contribution:
        prev = Contribution.get_or_none(Contribution.id == circuit.last_valid_contribution)
        previous = prev.blob_key if prev is not None else ""
    return VerifyJob(
        contribution_id=contrib.id,
        blob_key=contrib.blob_key,
        size=contrib.size,
        hash=contrib.hash,
        command=c.verifier_command,
        timeout_s=c.verify_timeout_s,
        r1cs_key=artifact_key(c.id, circuit.id, "r1cs") if circuit.r1cs_hash else "",
        ptau_key=artifact_key(c.id, circuit.id, "ptau") if circuit.ptau_hash else "",
        previous_key=previous,
        circuit_name=circuit.display_name,
    )


def receipt_fields(c: Ceremony, circuit: Circuit, contrib: Contribution) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ceremony": ceremony_name(c.id),
        "circuit": circuit_name(c.id, circuit.id),
        "circuit_sequence": circuit.sequence,
        "contribution": contribution_name(c.id, circuit.id, contrib.id),
        "index": contrib.index,
        "contributor": contrib.contributor,
        "hash": contrib.hash,
        "previous_hash": contrib.previous_hash,
        "size": contrib.size,
        "valid": contrib.state == VALID,
        "final": contrib.is_final,
        "upload_time_us": _micros(contrib.upload_time),
        "verify_time_us": _micros(contrib.verify_time),
    }
    if contrib.is_final:
        fields["beacon_hash"] = (contrib.extra or {}).get("beacon_hash", "")
        fields["beacon_iterations_exponent"] = (contrib.extra or {}).get("beacon_iterations_exponent", 0)
    return fields


def _micros(value: datetime | None) -> int:
    return 0 if value is None else round(value.timestamp() * 1_000_000)


def finish_verification(rt: Runtime, contribution_id: str, result: VerifyResult) -> Contribution:
    """Records the verifier's verdict. Valid: the contribution joins the chain. Invalid: its
    blob is discarded and the chain stays at the last valid one. Either way it is signed,
    and a contributor moves on to the next circuit. A verdict for a contribution no longer
    VERIFYING (already repaired) changes nothing."""
    blobs = blobs_of(rt)
    discard = ""
    with rt.store.write() as tx:
        contrib = Contribution.get_by_id(contribution_id)
        circuit = _lock_circuit(rt, contrib.circuit_id)
        contrib = Contribution.get_by_id(contribution_id)
        if contrib.state != VERIFYING:
            return contrib
        c = Ceremony.get_by_id(circuit.ceremony_id)
        valid = result.valid
        output = result.output
        if valid and contrib.index != circuit.last_valid_index + 1:
            valid, output = False, f"superseded: the chain is already at index {circuit.last_valid_index}"
        contrib.state = VALID if valid else INVALID
        contrib.verifier_output = output
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
        payload = receipts.encode(receipt_fields(c, circuit, contrib))
        contrib.receipt_payload = payload
        contrib.receipt_signature = rt.signer.sign(payload)
        contrib.receipt_key_id = rt.signer.key_id
        contrib.save()
        circuit.save()
        tx.emit(
            "ceremony.contribution.verified",
            contribution_name(c.id, circuit.id, contrib.id),
            {"valid": valid, "index": contrib.index, "watch_keys": [queue_key(c.id, circuit.id)]},
        )
        p = (
            Participant.get_or_none(Participant.id == contrib.participant_id)
            if contrib.participant_id
            else None
        )
        if p is not None and p.status == CONTRIBUTED and p.circuit_id == circuit.id:
            _advance(rt, tx, c, p, circuit)
        elif contrib.is_final and valid:
            coord = Participant.get_or_none(Participant.id == circuit.current_participant)
            if coord is not None:
                coord.circuit, coord.update_time = None, tx.now
                coord.save()
                _participant_event(tx, coord, "ceremony.participant.finalized_circuit")
            _release(rt, tx, c, circuit, circuit.current_participant or "")
        elif contrib.index == 0 and valid:
            _promote(rt, tx, c, circuit)
    if discard:
        blobs.delete(discard)
    return contrib


# -- transcript and finalization -------------------------------------------------------------


def transcript(ceremony_id: str) -> tuple[Ceremony, list[tuple[Circuit, list[Contribution]]]]:
    c = get_ceremony(ceremony_id)
    out = []
    for circuit in Circuit.select().where(Circuit.ceremony == c.id).order_by(Circuit.sequence):
        contribs = list(
            Contribution.select()
            .where((Contribution.circuit == circuit.id) & (Contribution.state != VERIFYING))
            .order_by(Contribution.upload_time, Contribution.id)
        )
        out.append((circuit, contribs))
    return c, out


def finalize_circuit(
    rt: Runtime, who: Principal, ceremony_id: str, circuit_id: str, beacon_hex: str, exponent: int
) -> tuple[Circuit, Participant]:
    v = Violations()
    if not HEX_RE.match(beacon_hex) or len(beacon_hex) > 128:
        v.add("beacon_hash_hex", "lower-case hex, an even number of digits, at most 128")
    if not 10 <= exponent <= 63:
        v.add("beacon_iterations_exponent", "10..63")
    v.raise_if_any()
    with rt.store.write() as tx:
        circuit = _lock_circuit(rt, circuit_id)
        if circuit.ceremony_id != ceremony_id:
            get_circuit(ceremony_id, circuit_id)
        c = _owned(rt, who, ceremony_id)
        _require_state(c, (CLOSED,), "finalize a circuit of")
        if circuit.finalized:
            raise FailedPrecondition("this circuit is already finalized", reason="ALREADY_FINALIZED")
        if circuit.last_valid_index < 0:
            raise FailedPrecondition("this circuit has no valid contribution", reason="NO_CONTRIBUTION")
        p = Participant.get_or_none((Participant.ceremony == c.id) & (Participant.user == who.user_id))
        if circuit.current_participant and (p is None or circuit.current_participant != p.id):
            raise FailedPrecondition(
                "a contributor still holds this circuit's turn; wait for it to end", reason="TURN_HELD"
            )
        if p is None:
            p = Participant.create(
                ceremony=c.id, user=who.user_id, status=FINALIZING, create_time=tx.now, update_time=tx.now
            )
        elif p.status in (WAITING, READY, CONTRIBUTING, CONTRIBUTED, TIMEDOUT) and p.circuit_id != circuit.id:
            raise FailedPrecondition(
                f"your own participation is {p.status} on another circuit", reason="PARTICIPANT_STATUS"
            )
        if p.circuit_id and p.circuit_id != circuit.id and p.status == FINALIZING:
            raise FailedPrecondition("finish the circuit you are finalizing first", reason="FINALIZING_OTHER")
        p.is_coordinator = True
        p.status, p.step, p.circuit = FINALIZING, "", circuit.id
        p.due_time = None
        p.update_time = tx.now
        p.save()
        circuit.current_participant = p.id
        circuit.beacon_hash = beacon_hex
        circuit.beacon_iterations = exponent
        circuit.save()
        _participant_event(tx, p, "ceremony.participant.finalizing", {"circuit": circuit.id})
    return circuit, p


def finalize_ceremony(rt: Runtime, who: Principal, ceremony_id: str) -> Ceremony:
    with rt.store.write() as tx:
        c = _owned(rt, who, ceremony_id, lock=True)
        _require_state(c, (CLOSED,), "finalize")
        circuits = _circuits(rt, c.id)
        pending = [k.display_name for k in circuits if not k.finalized]
        if not circuits or pending:
            raise FailedPrecondition(
                f"circuits without a valid final contribution: {', '.join(pending) or 'no circuits'}",
                reason="CIRCUITS_NOT_FINALIZED",
            )
        c.state, c.update_time = FINALIZED, tx.now
        c.save()
        Participant.update(status=FINALIZED, update_time=tx.now, circuit=None).where(
            (Participant.ceremony == c.id) & (Participant.status == FINALIZING)
        ).execute()
        _ceremony_event(tx, c, "ceremony.finalized")
    return c


# -- what streams read -----------------------------------------------------------------------

_VIEW_FIELDS = (
    Participant.id,
    Participant.ceremony,
    Participant.user,
    Participant.status,
    Participant.step,
    Participant.circuit,
    Participant.completed_circuits,
    Participant.timeouts_count,
    Participant.due_time,
    Participant.turn_start_time,
    Participant.create_time,
    Participant.update_time,
    Participant.queue_seq,
)


def _view(row: tuple[Any, ...]) -> ParticipantView:
    return ParticipantView(*row[:12])


def participant_view(participant_id: str) -> ParticipantView | None:
    row = Participant.select(*_VIEW_FIELDS).where(Participant.id == participant_id).tuples().first()
    return _view(row) if row else None


def queue_snapshot(circuit_id: str, now: datetime) -> QueueSnapshot | None:
    """Everything WatchQueue needs for every participant on one circuit, in one read."""
    with_ceremony = Circuit.select(Circuit, Ceremony).join(Ceremony).where(Circuit.id == circuit_id).first()
    if with_ceremony is None:
        return None
    circuit, c = with_ceremony, with_ceremony.ceremony
    rows = list(
        Participant.select(*_VIEW_FIELDS)
        .where(Participant.circuit == circuit_id)
        .order_by(Participant.queue_seq)
        .tuples()
    )
    participants: dict[str, ParticipantView] = {}
    positions: dict[str, int] = {}
    for row in rows:
        view = _view(row)
        participants[view.id] = view
        if view.status == WAITING:
            positions[view.id] = len(positions) + 1
    current = participants.get(circuit.current_participant or "")
    avg_c = average(circuit.contribution_total_s, circuit.contribution_count)
    avg_v = average(circuit.verification_total_s, circuit.verification_count)
    per_turn = None if avg_c is None else avg_c + (avg_v or timedelta())
    elapsed = None
    if current is not None:
        elapsed = now - current.turn_start_time if current.turn_start_time else timedelta()
    return QueueSnapshot(c.id, c.state, circuit.id, current, per_turn, elapsed, positions, participants)


# -- scheduler work --------------------------------------------------------------------------


def run_lifecycle(rt: Runtime, batch: int = 100) -> dict[str, int]:
    """Opens ceremonies at start_time and closes them at end_time (indexed state_due_time)."""
    opened = closed = 0
    now = rt.now()
    due = [
        cid
        for (cid,) in Ceremony.select(Ceremony.id)
        .where(Ceremony.state_due_time <= now)
        .order_by(Ceremony.state_due_time)
        .limit(batch)
        .tuples()
    ]
    for cid in due:
        with rt.store.write() as tx:
            query = Ceremony.select().where(Ceremony.id == cid)
            c = (query.for_update() if rt.store.is_postgres else query).first()
            if c is None or c.state_due_time is None or c.state_due_time > tx.now:
                continue
            if c.state == SCHEDULED and c.end_time <= tx.now:
                _close(tx, c)
                closed += 1
            elif c.state == SCHEDULED:
                _open(rt, tx, c)
                opened += 1
            elif c.state in (OPENED, PAUSED) and c.end_time <= tx.now:
                _close(tx, c)
                closed += 1
            else:
                c.state_due_time = c.end_time if c.state in (OPENED, PAUSED) else None
                c.save()
    return {"opened": opened, "closed": closed} if opened or closed else {}


def fire_deadlines(rt: Runtime, batch: int = 500) -> dict[str, int]:
    """Participants whose due_time has passed: READY past the start window and CONTRIBUTING
    past the turn become TIMEDOUT (the next is promoted at once); TIMEDOUT past the penalty
    go back to the end of the queue; CONTRIBUTED past the verification limit are re-verified."""
    counts = {"timed_out": 0, "requeued": 0, "reverified": 0}
    now = rt.now()
    due = list(
        Participant.select(Participant.id, Participant.circuit, Participant.status)
        .where(Participant.due_time <= now)
        .order_by(Participant.due_time)
        .limit(batch)
        .tuples()
    )
    blobs = blobs_of(rt)
    for pid, circuit_id, status in due:
        if status == CONTRIBUTED:
            stuck = (
                Contribution.select(Contribution.id)
                .where((Contribution.participant == pid) & (Contribution.state == VERIFYING))
                .first()
            )
            if stuck is not None:
                reverify(rt, stuck.id)
                counts["reverified"] += 1
                continue
        if circuit_id is None:
            continue
        with rt.store.write() as tx:
            circuit = _lock_circuit(rt, circuit_id)
            query = Participant.select().where(Participant.id == pid)
            p = (query.for_update() if rt.store.is_postgres else query).first()
            if p is None or p.due_time is None or p.due_time > tx.now or p.circuit_id != circuit_id:
                continue
            c = Ceremony.get_by_id(p.ceremony_id)
            if p.status in (READY, CONTRIBUTING):
                was = p.status
                _discard_uploads(p.user_id, circuit, blobs)
                p.status, p.step = TIMEDOUT, ""
                p.timeouts_count += 1
                p.turn_start_time = None
                p.due_time = tx.now + timedelta(seconds=c.penalty_s)
                p.update_time = tx.now
                p.save()
                _participant_event(tx, p, "ceremony.participant.timedout", {"was": was})
                log.info("contributor timed out", participant=p.id, circuit=circuit.id, was=was)
                _release(rt, tx, c, circuit, p.id)
                counts["timed_out"] += 1
            elif p.status == TIMEDOUT:
                _enter_queue(tx, c, p, circuit)
                _promote(rt, tx, c, circuit)
                counts["requeued"] += 1
            else:
                p.due_time = None
                p.save()
    return {k: n for k, n in counts.items() if n}


def reverify(rt: Runtime, contribution_id: str) -> None:
    """A verification that outlived its limit (the daemon restarted mid-way) runs again here;
    a second overrun makes the contribution invalid, so nothing waits forever."""
    from coordd.domain import ceremony_verify

    contrib = Contribution.get_by_id(contribution_id)
    attempts = int((contrib.extra or {}).get("verify_attempts", 0)) + 1
    with rt.store.write() as tx:
        Contribution.update(
            extra={**(contrib.extra or {}), "verify_attempts": attempts},
            verify_due_time=tx.now + timedelta(seconds=VERIFY_GRACE_S),
        ).where(Contribution.id == contribution_id).execute()
        if contrib.participant_id:
            Participant.update(due_time=tx.now + timedelta(seconds=VERIFY_GRACE_S)).where(
                Participant.id == contrib.participant_id
            ).execute()
    job = verification_job(rt, contribution_id)
    if job is None:
        return
    if attempts > 1:
        result = VerifyResult(False, "verification did not complete within its limit", 0.0)
    else:
        try:
            result = ceremony_verify.run(blobs_of(rt), job)
        except ceremony_verify.VerifierStopped:
            # Shutdown, not an overrun: this attempt does not count.
            with rt.store.write():
                Contribution.update(extra=contrib.extra or {}).where(
                    Contribution.id == contribution_id
                ).execute()
            raise
    log.warning("verification repaired", contribution=contribution_id, valid=result.valid)
    finish_verification(rt, contribution_id, result)


def repair(rt: Runtime) -> dict[str, int]:
    """Finds states with no way forward and repairs them, logging each repair:
    a circuit whose current contributor no longer holds the turn, a free turn with people
    waiting, a participant acting as contributor without holding the turn, an active
    status without a deadline, and genesis verifications that outlived their limit."""
    done = {"released": 0, "promoted": 0, "requeued": 0, "deadlines": 0, "reverified": 0}
    live = [
        cid
        for (cid,) in Ceremony.select(Ceremony.id)
        .where(Ceremony.state.in_((OPENED, PAUSED, CLOSED, SCHEDULED)))
        .tuples()
    ]
    for circuit_id, ceremony_id in (
        Circuit.select(Circuit.id, Circuit.ceremony).where(Circuit.ceremony.in_(live)).tuples()
        if live
        else []
    ):
        with rt.store.write() as tx:
            circuit = _lock_circuit(rt, circuit_id)
            c = Ceremony.get_by_id(ceremony_id)
            if circuit.current_participant:
                holder = Participant.get_or_none(Participant.id == circuit.current_participant)
                if holder is None or holder.circuit_id != circuit.id or holder.status not in HOLDING:
                    log.warning(
                        "repair: circuit turn held by a participant without it; released",
                        circuit=circuit.id,
                        participant=circuit.current_participant,
                        status=holder.status if holder else "missing",
                    )
                    _release(rt, tx, c, circuit, circuit.current_participant)
                    done["released"] += 1
            stray = Participant.select().where(
                (Participant.circuit == circuit.id)
                & Participant.status.in_((READY, CONTRIBUTING, CONTRIBUTED))
                & (Participant.id != (circuit.current_participant or ""))
            )
            for p in stray:
                log.warning(
                    "repair: participant acting without the turn; re-queued",
                    participant=p.id,
                    status=p.status,
                )
                _discard_uploads(p.user_id, circuit, blobs_of(rt))
                _enter_queue(tx, c, p, circuit)
                done["requeued"] += 1
            if not circuit.current_participant and _promote(rt, tx, c, circuit) is not None:
                log.warning("repair: free turn with participants waiting; promoted", circuit=circuit.id)
                done["promoted"] += 1
            no_deadline = (
                Participant.update(due_time=tx.now)
                .where(
                    (Participant.circuit == circuit.id)
                    & Participant.status.in_((READY, CONTRIBUTING, TIMEDOUT))
                    & Participant.due_time.is_null()
                )
                .execute()
            )
            if no_deadline:
                log.warning(
                    "repair: active participants without a deadline", circuit=circuit.id, count=no_deadline
                )
                done["deadlines"] += no_deadline
    now = rt.now()
    for (contribution_id,) in (
        Contribution.select(Contribution.id)
        .where(
            (Contribution.verify_due_time <= now)
            & (Contribution.state == VERIFYING)
            & Contribution.participant.is_null()
        )
        .tuples()
    ):
        reverify(rt, contribution_id)
        done["reverified"] += 1
    return {k: n for k, n in done.items() if n}
