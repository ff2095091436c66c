"""Participant deadlines (a scheduler task, every second, over the indexed `due_time`):

- READY past the start window or CONTRIBUTING past the turn: the contributor times out and
  the queue moves on at once (`time_out`: TIMEDOUT, penalty deadline, turn released, the
  next in the queue promoted);
- TIMEDOUT past the penalty: back to the end of the circuit's queue.

(A contribution whose verification stopped is resumed by runner.recover, not here.) After a
restart, the time the daemon was down is given back to the contributors holding a turn
(`give_back_downtime`): a turn interrupted by the daemon's own restart is kept.
"""

from __future__ import annotations

import time
import weakref
from datetime import timedelta

import structlog

from coordd.blobs.store import BlobStore
from coordd.domain.ceremony.emit import participant_event
from coordd.domain.ceremony.lookup import lock_circuit
from coordd.domain.ceremony.queue import enter_queue, promote, release
from coordd.domain.ceremony.states import CONTRIBUTING, OPENED, PAUSED, READY, TIMEDOUT
from coordd.domain.ceremony.uploads import blobs_of, discard_uploads
from coordd.runtime import Runtime
from coordd.store.ceremony import leases, queries
from coordd.store.ceremony.models import Ceremony, Circuit, Participant
from coordd.store.db import Tx

log = structlog.get_logger("coordd.ceremony")

# Deadlines not run for longer than this mean the daemon was down (not merely busy).
OUTAGE_S = 3.0
# Runtimes whose downtime was already given back (once per process start or leadership).
_resumed: weakref.WeakSet[Runtime] = weakref.WeakSet()


def give_back_downtime(rt: Runtime) -> int:
    """Records that deadlines run (wall clock). On the first run of a process, when the last
    run is more than OUTAGE_S ago, the daemon was down that long: every contributor holding a
    turn gets that time back (their deadline moves by it). Returns how many were extended."""
    now_us = time.time_ns() // 1000
    first = rt not in _resumed
    _resumed.add(rt)
    with rt.store.write():
        previous = leases.touch_clock(now_us)
        if not first or previous is None or now_us - previous <= OUTAGE_S * 1_000_000:
            return 0
        down_us = now_us - previous
        extended = leases.extend_turns(queries.ceremony_ids_in((OPENED, PAUSED)), down_us)
    if extended:
        log.warning(
            "daemon was down: turn deadlines extended by the downtime",
            down_s=round(down_us / 1e6, 1),
            participants=extended,
        )
    return extended


def time_out(rt: Runtime, tx: Tx, c: Ceremony, circuit: Circuit, p: Participant, blobs: BlobStore) -> None:
    """The contributor holding `circuit`'s turn missed its deadline: its pending upload is
    discarded, it is TIMEDOUT until the penalty ends, and the turn passes to the next in the
    queue at once (the circuit and participant rows are locked by the caller)."""
    was = p.status
    discard_uploads(p.user_id, circuit, blobs)
    p.status, p.step = TIMEDOUT, ""
    p.timeouts_count += 1
    p.turn_start_time = None
    p.due_time = tx.now + timedelta(seconds=c.penalty_s)
    p.update_time = tx.now
    queries.save(p)
    participant_event(tx, p, "ceremony.participant.timedout", {"was": was})
    log.info("contributor timed out", participant=p.id, circuit=circuit.id, was=was)
    release(rt, tx, c, circuit, p.id)


def fire_deadlines(rt: Runtime, batch: int = 500) -> dict[str, int]:
    """Participants whose due_time has passed: READY past the start window and CONTRIBUTING
    past the turn become TIMEDOUT (the next is promoted at once); TIMEDOUT past the penalty
    go back to the end of the queue."""
    counts = {"timed_out": 0, "requeued": 0, "extended": give_back_downtime(rt)}
    due = queries.due_participants(rt.now(), batch)
    blobs = blobs_of(rt)
    for pid, circuit_id, _status in due:
        if circuit_id is None:
            continue
        with rt.store.write() as tx:
            circuit = lock_circuit(rt, circuit_id)
            p = queries.lock_participant(pid, for_update=rt.store.is_postgres)
            if p is None or p.due_time is None or p.due_time > tx.now or p.circuit_id != circuit_id:
                continue
            c = queries.ceremony_by_id(p.ceremony_id)
            if p.status in (READY, CONTRIBUTING):
                time_out(rt, tx, c, circuit, p, blobs)
                counts["timed_out"] += 1
            elif p.status == TIMEDOUT:
                enter_queue(tx, c, p, circuit)
                promote(rt, tx, c, circuit)
                counts["requeued"] += 1
            else:
                p.due_time = None
                queries.save(p)
    return {k: n for k, n in counts.items() if n}
