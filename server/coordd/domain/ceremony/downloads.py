"""Who may download which contribution, and when a download starts the caller's turn."""

from __future__ import annotations

from dataclasses import dataclass

from coordd.core.errors import NotFound, PermissionDenied
from coordd.core.principal import Principal
from coordd.domain.ceremony.emit import participant_event
from coordd.domain.ceremony.lookup import get_circuit, lock_circuit
from coordd.domain.ceremony.queue import require_turn, start_turn
from coordd.domain.ceremony.states import CONTRIBUTING, READY
from coordd.runtime import Runtime
from coordd.store.ceremony import queries


@dataclass(frozen=True)
class DownloadPlan:
    blob_key: str
    size: int
    hash: str
    index: int


def open_download(
    rt: Runtime, who: Principal, ceremony_id: str, circuit_id: str, index: int | None
) -> DownloadPlan:
    """Who may read a contribution: the circuit's current contributor (READY starts its turn),
    the finalizing coordinator, the ceremony's coordinator or an admin, and anyone once the
    circuit is finalized."""
    with rt.store.write() as tx:
        circuit = lock_circuit(rt, circuit_id)
        if circuit.ceremony_id != ceremony_id:
            get_circuit(ceremony_id, circuit_id)
        c = queries.ceremony_by_id(ceremony_id)
        p = queries.find_participant(c.id, who.user_id)
        holder = p is not None and circuit.current_participant == p.id
        if holder and p is not None and p.status in (READY, CONTRIBUTING):
            require_turn(p, circuit, tx.now)
            if p.status == READY:
                start_turn(tx, c, circuit, p)
                p.step = "DOWNLOADING"
                p.update_time = tx.now
                queries.save(p)
                participant_event(tx, p, "ceremony.participant.progress", {"step": p.step})
        elif not (holder or circuit.finalized or who.is_admin or who.user_id == c.coordinator_id):
            raise PermissionDenied(
                "only the circuit's current contributor or the coordinator may download now",
                reason="NOT_YOUR_TURN",
            )
        wanted = circuit.last_valid_index if index is None else index
        found = queries.valid_contribution(circuit.id, wanted)
        if found is None:
            raise NotFound(
                f"no valid contribution {wanted} on this circuit",
                reason="NO_CONTRIBUTION",
                metadata={"index": str(wanted)},
            )
    return DownloadPlan(found.blob_key, found.size, found.hash, found.index)
