"""The public transcript: every circuit with its verified contributions (valid or not), each
carrying its signed receipt."""

from __future__ import annotations

from coordd.domain.ceremony.lookup import get_ceremony
from coordd.store.ceremony import queries
from coordd.store.ceremony.models import Ceremony, Circuit, Contribution


def transcript(ceremony_id: str) -> tuple[Ceremony, list[tuple[Circuit, list[Contribution]]]]:
    c = get_ceremony(ceremony_id)
    return c, [(circuit, queries.recorded_contributions(circuit.id)) for circuit in queries.circuits_of(c.id)]
