"""Finalization, once the ceremony is CLOSED: the coordinator takes each circuit's turn
(FINALIZING) to upload the final, beacon-derived contribution; when every circuit is
finalized, the ceremony is FINALIZED."""

from __future__ import annotations

from coordd.core.errors import FailedPrecondition, Violations
from coordd.core.principal import Principal
from coordd.domain.ceremony.emit import ceremony_event, participant_event
from coordd.domain.ceremony.lookup import circuits, get_circuit, lock_circuit, owned, require_state
from coordd.domain.ceremony.names import listed
from coordd.domain.ceremony.spec import HEX_RE
from coordd.domain.ceremony.states import (
    CLOSED,
    CONTRIBUTED,
    CONTRIBUTING,
    FINALIZED,
    FINALIZING,
    READY,
    TIMEDOUT,
    WAITING,
)
from coordd.runtime import Runtime
from coordd.store.ceremony import queries
from coordd.store.ceremony.models import Ceremony, Circuit, Participant


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
        circuit = lock_circuit(rt, circuit_id)
        if circuit.ceremony_id != ceremony_id:
            get_circuit(ceremony_id, circuit_id)
        c = owned(rt, who, ceremony_id)
        require_state(c, (CLOSED,), "finalize a circuit of")
        if circuit.finalized:
            raise FailedPrecondition("this circuit is already finalized", reason="ALREADY_FINALIZED")
        if circuit.last_valid_index < 0:
            raise FailedPrecondition("this circuit has no valid contribution", reason="NO_CONTRIBUTION")
        p = queries.find_participant(c.id, who.user_id)
        if circuit.current_participant and (p is None or circuit.current_participant != p.id):
            raise FailedPrecondition(
                "a contributor still holds this circuit's turn; wait for it to end", reason="TURN_HELD"
            )
        if p is None:
            p = queries.create_participant(c.id, who.user_id, FINALIZING, tx.now)
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
        queries.save(p)
        circuit.current_participant = p.id
        circuit.beacon_hash = beacon_hex
        circuit.beacon_iterations = exponent
        queries.save(circuit)
        participant_event(tx, p, "ceremony.participant.finalizing", {"circuit": circuit.id})
    return circuit, p


def finalize_ceremony(rt: Runtime, who: Principal, ceremony_id: str) -> Ceremony:
    with rt.store.write() as tx:
        c = owned(rt, who, ceremony_id, lock=True)
        require_state(c, (CLOSED,), "finalize")
        ordered = circuits(rt, c.id)
        pending = [k.display_name for k in ordered if not k.finalized]
        if not ordered or pending:
            raise FailedPrecondition(
                f"circuits without a valid final contribution: {listed(pending) or 'no circuits'}",
                reason="CIRCUITS_NOT_FINALIZED",
            )
        c.state, c.update_time = FINALIZED, tx.now
        queries.save(c)
        queries.finish_finalizers(c.id, tx.now)
        ceremony_event(tx, c, "ceremony.finalized")
    return c
