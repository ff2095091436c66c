"""A ceremony's circuits, in sequence order: each has its own queue, turn and contribution
chain. Circuits are added while the ceremony is SCHEDULED."""

from __future__ import annotations

from coordd.core.errors import Violations
from coordd.core.principal import Principal
from coordd.domain.ceremony.lookup import get_ceremony, owned, require_state
from coordd.domain.ceremony.names import circuit_name
from coordd.domain.ceremony.spec import DEFAULT_MAX_CONTRIBUTION_BYTES
from coordd.domain.ceremony.states import SCHEDULED
from coordd.runtime import Runtime
from coordd.store.ceremony import queries
from coordd.store.ceremony.models import Circuit


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
        c = owned(rt, who, ceremony_id, lock=True)
        require_state(c, (SCHEDULED,), "add a circuit to")
        circuit = queries.create_circuit(
            ceremony=c.id,
            display_name=display_name,
            sequence=queries.last_sequence(c.id) + 1,
            max_contribution_bytes=max_bytes or DEFAULT_MAX_CONTRIBUTION_BYTES,
            create_time=tx.now,
        )
        tx.emit("ceremony.circuit.added", circuit_name(c.id, circuit.id), {"sequence": circuit.sequence})
    return circuit


def list_circuits(ceremony_id: str) -> list[Circuit]:
    get_ceremony(ceremony_id)
    return queries.circuits_of(ceremony_id)


def waiting_counts(circuit_ids: list[str]) -> dict[str, int]:
    """How many are WAITING in each circuit's queue (circuits with nobody waiting are absent)."""
    return queries.waiting_counts(circuit_ids)
