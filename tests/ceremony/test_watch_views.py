"""The rows a circuit's queue read gives WatchQueue (`queue_views`, read on the cursor without
peewee's row conversion) are exactly the rows `participant_view` gives through peewee, on both
backends: same values, same types, timestamps as aware UTC datetimes."""

from __future__ import annotations

from datetime import UTC, datetime

from coordd.domain.ceremony import snapshots
from coordd.store.ceremony import views
from coordd_client.v1 import ceremony_pb2 as pb
from tests.ceremony.e2e_ceremony.helpers import Ceremonies
from tests.support.server import bearer


def test_a_queue_read_gives_the_same_rows_as_one_participant_read(server):
    cer = Ceremonies(server)
    ceremony, _ = cer.open()
    tokens = [server.make_user("participant")[1] for _ in range(4)]
    joined = [cer.join(ceremony, token) for token in tokens]
    # One leaves (its row moves off the queue), so the read also sees a row change.
    cer.stub.LeaveCeremony(pb.LeaveCeremonyRequest(ceremony=ceremony.name), metadata=bearer(tokens[0]))
    circuit_id = joined[1].circuit.rsplit("/", 1)[-1]

    rows = server.call(server.rt.run(views.queue_views, circuit_id))
    assert [r.id for r in rows] == [p.name.rsplit("/", 1)[-1] for p in joined[1:]]  # queue order
    for row in rows:
        one = server.call(server.rt.run(views.participant_view, row.id))
        assert row == one
        assert [type(v) for v in row] == [type(v) for v in one]
        assert row.create_time.tzinfo is UTC and isinstance(row.update_time, datetime)
    statuses = {r.status for r in rows}
    assert "WAITING" in statuses and len(statuses) == 2  # the new head holds the turn
    head = next(r for r in rows if r.status != "WAITING")
    assert head.due_time is not None and head.due_time.tzinfo is UTC

    snap = server.call(server.rt.run(snapshots.queue_snapshot, circuit_id, server.rt.now()))
    assert snap.current == head
    assert snap.wait_keys == (f"ceremonies/{snap.ceremony_id}", snapshots.ready_key(circuit_id))
    assert snap.positions == {r.id: i for i, r in enumerate((r for r in rows if r.status == "WAITING"), 1)}
