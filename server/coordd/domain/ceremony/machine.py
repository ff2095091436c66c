"""The ceremony state machine: SCHEDULED -> OPENED <-> PAUSED -> CLOSED -> FINALIZED.

A coordinator creates, updates (while SCHEDULED), pauses, resumes and closes a ceremony;
`run_lifecycle` (a scheduler task) opens it at start_time and closes it at end_time. When a
ceremony opens, early joiners enter the first circuit's queue in join order; when it
resumes, every circuit's free turn is given to the head of its queue.
"""

from __future__ import annotations

import coordd.domain.ceremony.verifiers as verifiers
from coordd.core.errors import AlreadyExists, FailedPrecondition, Violations
from coordd.core.paging import Page, PageRequest
from coordd.core.principal import Principal
from coordd.domain.ceremony.emit import ceremony_event
from coordd.domain.ceremony.lookup import circuits, owned, require_state
from coordd.domain.ceremony.names import ceremony_name
from coordd.domain.ceremony.queue import enter_queue, promote
from coordd.domain.ceremony.spec import (
    UPDATABLE,
    CeremonySpec,
    apply_spec,
    check_mask,
    check_spec,
    merged_spec,
)
from coordd.domain.ceremony.states import CLOSED, OPENED, PAUSED, SCHEDULED
from coordd.runtime import Runtime
from coordd.store.ceremony import leases, queries
from coordd.store.ceremony.models import Ceremony
from coordd.store.db import Tx


def _resolve_verifier(rt: Runtime, spec: CeremonySpec, fields: set[str]) -> None:
    """A named (or default) verifier: its recorded name and the time limit declared for it."""
    if "verifier" in fields:
        spec.verifier_name, timeout = verifiers.resolve(rt, spec.verifier_name, spec.verifier_command)
        if timeout is not None:
            spec.verify_timeout_s = timeout


def create_ceremony(rt: Runtime, who: Principal, spec: CeremonySpec) -> Ceremony:
    check_spec(Violations(), spec, set(UPDATABLE), who, creating=True)
    if leases.prefix_taken(spec.prefix):
        raise _prefix_taken(spec.prefix)
    _resolve_verifier(rt, spec, set(UPDATABLE))
    try:
        with rt.store.write() as tx:
            c = Ceremony(
                coordinator=who.user_id,
                prefix=spec.prefix,
                state=SCHEDULED,
                create_time=tx.now,
                update_time=tx.now,
            )
            apply_spec(c, spec, set(UPDATABLE))
            queries.insert_ceremony(c)
            tx.emit("ceremony.created", ceremony_name(c.id), {"prefix": c.prefix})
    except queries.IntegrityError:
        raise _prefix_taken(spec.prefix) from None
    return c


def _prefix_taken(prefix: str) -> AlreadyExists:
    return AlreadyExists(
        f"a ceremony with prefix {prefix!r} already exists",
        reason="PREFIX_TAKEN",
        metadata={"prefix": prefix},
    )


def list_ceremonies(page: PageRequest, state: str) -> Page[Ceremony]:
    return queries.page_ceremonies(page, state)


def update_ceremony(
    rt: Runtime, who: Principal, ceremony_id: str, spec: CeremonySpec, mask: list[str]
) -> Ceremony:
    check_mask(mask)
    fields = set(mask)
    with rt.store.write() as tx:
        c = owned(rt, who, ceremony_id, lock=True)
        require_state(c, (SCHEDULED,), "update")
        _resolve_verifier(rt, spec, fields)
        merged = merged_spec(c, spec, fields)
        check_spec(Violations(), merged, fields | {"start_time", "end_time"}, who, creating=False)
        apply_spec(c, merged, fields)
        c.update_time = tx.now
        queries.save(c)
        ceremony_event(tx, c, "ceremony.updated", {"fields": sorted(fields)})
    return c


def open_ceremony(rt: Runtime, who: Principal, ceremony_id: str) -> Ceremony:
    """SCHEDULED -> OPENED now (instead of at start_time), once every circuit has a verified
    genesis: early joiners enter the first circuit's queue."""
    with rt.store.write() as tx:
        c = owned(rt, who, ceremony_id, lock=True)
        require_state(c, (SCHEDULED,), "open")
        locked = circuits(rt, c.id, lock=True)
        if not locked:
            raise FailedPrecondition("add a circuit (and its genesis) first", reason="NO_CIRCUITS")
        missing = [k.display_name for k in locked if k.last_valid_index < 0]
        if missing:
            raise FailedPrecondition(
                f"circuits without a verified genesis contribution: {', '.join(missing)} (UploadGenesis)",
                reason="NO_GENESIS",
                metadata={"circuits": ",".join(missing)},
            )
        if c.end_time <= tx.now:
            raise FailedPrecondition("the ceremony's end_time has passed", reason="ENDED")
        c.start_time = tx.now
        _open(rt, tx, c)
    return c


def pause_ceremony(rt: Runtime, who: Principal, ceremony_id: str) -> Ceremony:
    with rt.store.write() as tx:
        c = owned(rt, who, ceremony_id, lock=True)
        require_state(c, (OPENED,), "pause")
        c.state, c.update_time = PAUSED, tx.now
        queries.save(c)
        ceremony_event(tx, c, "ceremony.paused")
    return c


def resume_ceremony(rt: Runtime, who: Principal, ceremony_id: str) -> Ceremony:
    with rt.store.write() as tx:
        c = owned(rt, who, ceremony_id, lock=True)
        require_state(c, (PAUSED,), "resume")
        c.state, c.update_time = OPENED, tx.now
        queries.save(c)
        ceremony_event(tx, c, "ceremony.resumed")
        for circuit in circuits(rt, c.id, lock=True):
            promote(rt, tx, c, circuit)
    return c


def close_ceremony(rt: Runtime, who: Principal, ceremony_id: str) -> Ceremony:
    with rt.store.write() as tx:
        c = owned(rt, who, ceremony_id, lock=True)
        require_state(c, (SCHEDULED, OPENED, PAUSED), "close")
        _close(tx, c)
    return c


def _close(tx: Tx, c: Ceremony) -> None:
    c.state, c.update_time, c.state_due_time = CLOSED, tx.now, None
    queries.save(c)
    ceremony_event(tx, c, "ceremony.closed")


def _open(rt: Runtime, tx: Tx, c: Ceremony) -> None:
    """SCHEDULED -> OPENED: early joiners enter the first circuit's queue in join order."""
    c.state, c.update_time, c.state_due_time = OPENED, tx.now, c.end_time
    queries.save(c)
    ceremony_event(tx, c, "ceremony.opened")
    locked = circuits(rt, c.id, lock=True)
    if locked:
        for p in queries.early_joiners(c.id):
            enter_queue(tx, c, p, locked[0])
        promote(rt, tx, c, locked[0])


def run_lifecycle(rt: Runtime, batch: int = 100) -> dict[str, int]:
    """Opens ceremonies at start_time and closes them at end_time (indexed state_due_time)."""
    opened = closed = 0
    for cid in queries.due_ceremonies(rt.now(), batch):
        with rt.store.write() as tx:
            c = queries.lock_ceremony(cid, for_update=rt.store.is_postgres)
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
                queries.save(c)
    return {"opened": opened, "closed": closed} if opened or closed else {}
