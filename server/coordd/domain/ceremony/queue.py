"""A circuit's FIFO queue and its one turn: entering the queue, giving a free turn to the head,
releasing a turn (the next is promoted at once), moving on to the next circuit, and the
READY -> CONTRIBUTING start of a turn with its deadline.

Every function here runs with the circuit's row locked by the caller, so concurrent joins,
timeouts and uploads see one order. Queue order is `queue_seq`, a per-circuit counter.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from coordd.core.errors import FailedPrecondition
from coordd.domain.ceremony.emit import participant_event
from coordd.domain.ceremony.lookup import lock_circuit
from coordd.domain.ceremony.names import participant_name, queue_key
from coordd.domain.ceremony.spec import circuit_turn_timeout
from coordd.domain.ceremony.states import CONTRIBUTING, DONE, OPENED, READY, WAITING
from coordd.runtime import Runtime
from coordd.store.ceremony import queries
from coordd.store.ceremony.models import Ceremony, Circuit, Participant
from coordd.store.db import Tx


def enter_queue(tx: Tx, c: Ceremony, p: Participant, circuit: Circuit) -> None:
    """Puts `p` at the end of `circuit`'s queue (the circuit row is locked by the caller)."""
    circuit.queue_counter += 1
    queries.set_queue_counter(circuit.id, circuit.queue_counter)
    p.circuit = circuit.id
    p.status, p.step, p.queue_seq = WAITING, "", circuit.queue_counter
    p.due_time = p.turn_start_time = None
    p.update_time = tx.now
    queries.save(p)
    participant_event(tx, p, "ceremony.participant.waiting", {"circuit": circuit.id})


def promote(rt: Runtime, tx: Tx, c: Ceremony, circuit: Circuit) -> Participant | None:
    """Gives a free turn to the head of the queue, when the ceremony is OPENED and the
    circuit has a valid genesis and is not finalized."""
    if c.state != OPENED or circuit.current_participant or circuit.last_valid_index < 0 or circuit.finalized:
        return None
    head = queries.next_in_queue(circuit.id)
    if head is None:
        return None
    head.status, head.step = READY, ""
    head.due_time = tx.now + timedelta(seconds=c.start_window_s)
    head.update_time = tx.now
    queries.save(head)
    circuit.current_participant = head.id
    queries.set_current_participant(circuit.id, head.id)
    participant_event(tx, head, "ceremony.participant.ready", {"circuit": circuit.id})
    return head


def release(rt: Runtime, tx: Tx, c: Ceremony, circuit: Circuit, participant_id: str) -> None:
    """Frees the circuit's turn held by `participant_id` and promotes the next at once."""
    if circuit.current_participant == participant_id:
        circuit.current_participant = None
        queries.set_current_participant(circuit.id, None)
    promote(rt, tx, c, circuit)


def advance(rt: Runtime, tx: Tx, c: Ceremony, p: Participant, circuit: Circuit) -> None:
    """`p` is finished with `circuit`: the turn passes on, `p` joins the next circuit's queue
    or is DONE."""
    p.completed_circuits += 1
    release(rt, tx, c, circuit, p.id)
    nxt = queries.next_circuit(c.id, circuit.sequence)
    if nxt is None or p.left:
        p.status, p.step, p.circuit = DONE, "", None
        p.due_time = p.turn_start_time = None
        p.update_time = tx.now
        queries.save(p)
        tx.emit(
            "ceremony.participant.done",
            participant_name(c.id, p.id),
            {"status": DONE, "watch_keys": [queue_key(c.id, circuit.id)]},
        )
        return
    nxt = lock_circuit(rt, nxt.id)
    tx.emit(
        "ceremony.participant.moved",
        participant_name(c.id, p.id),
        {"status": p.status, "watch_keys": [queue_key(c.id, circuit.id)]},
    )
    enter_queue(tx, c, p, nxt)
    promote(rt, tx, c, nxt)


def start_turn(tx: Tx, c: Ceremony, circuit: Circuit, p: Participant) -> None:
    """READY -> CONTRIBUTING: the turn's clock starts and its deadline is set."""
    p.status = CONTRIBUTING
    p.turn_start_time = tx.now
    p.retries_used = 0
    p.due_time = tx.now + circuit_turn_timeout(c, circuit)
    participant_event(tx, p, "ceremony.participant.contributing", {"circuit": circuit.id})


def require_turn(p: Participant, circuit: Circuit | None, now: datetime) -> Circuit:
    """The circuit, if `p` holds its turn (READY or CONTRIBUTING) before the deadline."""
    if circuit is None or circuit.current_participant != p.id or p.status not in (READY, CONTRIBUTING):
        raise FailedPrecondition("it is not your turn", reason="NOT_YOUR_TURN", metadata={"status": p.status})
    if p.due_time is not None and p.due_time <= now:
        raise FailedPrecondition(
            "your turn's deadline has passed", reason="DEADLINE_PASSED", metadata={"status": p.status}
        )
    return circuit
