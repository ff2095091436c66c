"""Repair of states with no way forward (a scheduler task, every 15 s), each logged: a turn
held by a participant that no longer holds it, a participant acting as contributor without
the turn, a free turn with people waiting, an active status without a deadline.
(Verifications that stopped are resumed by runner.recover.)"""

from __future__ import annotations

import structlog

from coordd.domain.ceremony.lookup import lock_circuit
from coordd.domain.ceremony.queue import enter_queue, promote, release
from coordd.domain.ceremony.states import (
    CLOSED,
    CONTRIBUTED,
    CONTRIBUTING,
    HOLDING,
    OPENED,
    PAUSED,
    READY,
    SCHEDULED,
    TIMEDOUT,
)
from coordd.domain.ceremony.uploads import blobs_of, discard_uploads
from coordd.runtime import Runtime
from coordd.store.ceremony import queries

log = structlog.get_logger("coordd.ceremony")


def repair(rt: Runtime) -> dict[str, int]:
    """Finds states with no way forward and repairs them, logging each repair:
    a circuit whose current contributor no longer holds the turn, a free turn with people
    waiting, a participant acting as contributor without holding the turn, an active
    status without a deadline."""
    done = {"released": 0, "promoted": 0, "requeued": 0, "deadlines": 0}
    live = queries.ceremony_ids_in((OPENED, PAUSED, CLOSED, SCHEDULED))
    for circuit_id, ceremony_id in queries.circuits_of_ceremonies(live):
        with rt.store.write() as tx:
            circuit = lock_circuit(rt, circuit_id)
            c = queries.ceremony_by_id(ceremony_id)
            if circuit.current_participant:
                holder = queries.participant_by_key(circuit.current_participant)
                if holder is None or holder.circuit_id != circuit.id or holder.status not in HOLDING:
                    log.warning(
                        "repair: circuit turn held by a participant without it; released",
                        circuit=circuit.id,
                        participant=circuit.current_participant,
                        status=holder.status if holder else "missing",
                    )
                    release(rt, tx, c, circuit, circuit.current_participant)
                    done["released"] += 1
            stray = queries.strays(
                circuit.id, circuit.current_participant or "", (READY, CONTRIBUTING, CONTRIBUTED)
            )
            for p in stray:
                log.warning(
                    "repair: participant acting without the turn; re-queued",
                    participant=p.id,
                    status=p.status,
                )
                discard_uploads(p.user_id, circuit, blobs_of(rt))
                enter_queue(tx, c, p, circuit)
                done["requeued"] += 1
            if not circuit.current_participant and promote(rt, tx, c, circuit) is not None:
                log.warning("repair: free turn with participants waiting; promoted", circuit=circuit.id)
                done["promoted"] += 1
            no_deadline = queries.set_missing_deadlines(circuit.id, (READY, CONTRIBUTING, TIMEDOUT), tx.now)
            if no_deadline:
                log.warning(
                    "repair: active participants without a deadline", circuit=circuit.id, count=no_deadline
                )
                done["deadlines"] += no_deadline
    return {k: n for k, n in done.items() if n}
