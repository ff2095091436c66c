"""Finding ceremonies, circuits and the caller's participation (NotFound when absent), taking
their row locks, and the ownership and state checks most changes start with.

Lock order, everywhere: a ceremony, then its circuits in sequence order, then a participant.
A circuit is locked before the participant on it is (re-)read, so two transactions never
wait on each other in a cycle. Locks are taken on PostgreSQL; SQLite serializes writers.
"""

from __future__ import annotations

from coordd.core.errors import FailedPrecondition, NotFound
from coordd.core.principal import Principal, require_owner_or_admin
from coordd.domain.ceremony.names import ceremony_name, circuit_name, listed
from coordd.runtime import Runtime
from coordd.store.ceremony import queries
from coordd.store.ceremony.models import Ceremony, Circuit, Participant


def _no_ceremony(ceremony_id: str) -> NotFound:
    name = ceremony_name(ceremony_id)
    return NotFound(f"{name} not found", metadata={"resource": name})


def get_ceremony(ceremony_id: str) -> Ceremony:
    c = queries.find_ceremony(ceremony_id)
    if c is None:
        raise _no_ceremony(ceremony_id)
    return c


def owned(rt: Runtime, who: Principal, ceremony_id: str, lock: bool = False) -> Ceremony:
    """The ceremony, if the caller is its coordinator or an admin (locked when `lock`)."""
    c = queries.lock_ceremony(ceremony_id, for_update=lock and rt.store.is_postgres)
    if c is None:
        raise _no_ceremony(ceremony_id)
    require_owner_or_admin(who, c.coordinator_id, "ceremony")
    return c


def require_state(c: Ceremony, allowed: tuple[str, ...], action: str) -> None:
    if c.state not in allowed:
        raise FailedPrecondition(
            f"cannot {action} a ceremony that is {c.state} (needs {listed(allowed, ' or ')})",
            reason="CEREMONY_STATE",
            metadata={"state": c.state},
        )


def circuits(rt: Runtime, ceremony_id: str, lock: bool = False) -> list[Circuit]:
    """The ceremony's circuits in sequence order (all locked, in that order, when `lock`)."""
    return queries.circuits_of(ceremony_id, for_update=lock and rt.store.is_postgres)


def lock_circuit(rt: Runtime, circuit_id: str) -> Circuit:
    circuit = queries.lock_circuit(circuit_id, for_update=rt.store.is_postgres)
    if circuit is None:
        raise NotFound(f"circuit {circuit_id} not found", metadata={"resource": f"circuits/{circuit_id}"})
    return circuit


def get_circuit(ceremony_id: str, circuit_id: str) -> Circuit:
    circuit = queries.find_circuit(ceremony_id, circuit_id)
    if circuit is None:
        name = circuit_name(ceremony_id, circuit_id)
        raise NotFound(f"{name} not found", metadata={"resource": name})
    return circuit


def mine(ceremony_id: str, who: Principal) -> Participant:
    """The caller's participation in the ceremony."""
    p = queries.find_participant(ceremony_id, who.user_id)
    if p is None:
        get_ceremony(ceremony_id)
        raise NotFound(
            f"you have not joined {ceremony_name(ceremony_id)}",
            reason="NOT_A_PARTICIPANT",
            metadata={"resource": ceremony_name(ceremony_id)},
        )
    return p


def lock_mine(rt: Runtime, ceremony_id: str, who: Principal) -> tuple[Participant, Circuit | None]:
    """The caller's participant with its circuit locked. The circuit is locked first (the
    global lock order), then the participant is re-read; a move in between is retried."""
    for _ in range(5):
        p = mine(ceremony_id, who)
        circuit = lock_circuit(rt, p.circuit_id) if p.circuit_id else None
        fresh = queries.lock_participant(p.id, for_update=rt.store.is_postgres)
        if fresh is not None and fresh.circuit_id == p.circuit_id:
            return fresh, circuit
    raise FailedPrecondition("your participation changed while handling the call; retry", reason="RETRY")
