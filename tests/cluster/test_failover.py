"""Replicas die, drain and come back: the scheduler moves to exactly one other replica that every
replica names, and a stream through nginx ends with a status a client retries."""

from __future__ import annotations

import threading
import time

import grpc

from coordd_client.v1 import status_pb2, status_pb2_grpc
from tests.cluster.cluster import LEASE_S, Cluster, bearer, wait_for


def _failover(cluster: Cluster, stop) -> tuple[float, str]:  # type: ignore[no-untyped-def]
    """Stops the leader with `stop(daemon)`; returns (seconds until the survivors agree on a new
    leader, its instance id)."""
    old = cluster.leader()
    old_id = cluster.status(old).instance_id
    survivors = [r for r in cluster.replicas if r is not old]
    started = time.monotonic()
    stop(old)
    new = cluster.leader(among=survivors, timeout=10 * LEASE_S)
    elapsed = time.monotonic() - started
    new_id = cluster.status(new).instance_id
    assert new_id != old_id
    return elapsed, new_id


def test_sigkill_of_the_leader_hands_the_scheduler_to_one_other_replica_named_by_every_replica(
    own_cluster: Cluster,
):
    elapsed, new_id = _failover(own_cluster, lambda d: d.proc.kill())
    print(f"\nfigure: failover after SIGKILL of the leader {elapsed:.2f} s (lease {LEASE_S} s)")
    # Tasks keep running under the new leader: its task runs move on.
    leader = own_cluster.leader()
    runs = {t.name: t.run_count for t in own_cluster.status(leader).scheduler.tasks}
    wait_for(
        "the new leader to run its tasks",
        lambda: any(
            t.run_count > runs.get(t.name, 0) and t.name == "node-detect-down"
            for t in own_cluster.status(leader).scheduler.tasks
        ),
        timeout=10,
    )
    # The killed replica comes back as a follower: still one leader, the same one.
    killed = next(i for i, r in enumerate(own_cluster.replicas) if r.proc.poll() is not None)
    back = own_cluster.restart(killed)
    assert own_cluster.leader() is not back
    assert own_cluster.status(back).scheduler.leader_instance_id == new_id


def test_a_replica_stopped_with_sigterm_ends_a_stream_through_nginx_with_unavailable(own_cluster: Cluster):
    stub = status_pb2_grpc.StatusServiceStub(own_cluster.front)
    call = stub.WatchEvents(status_pb2.WatchEventsRequest(), metadata=bearer(own_cluster.admin_key))
    ended: list[grpc.RpcError] = []

    def read() -> None:
        try:
            for _ in call:
                pass
        except grpc.RpcError as exc:
            ended.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    serving = wait_for(
        "the stream to open on a replica",
        lambda: [r for r in own_cluster.replicas if own_cluster.status(r).open_streams > 0],
    )
    assert len(serving) == 1
    assert serving[0].terminate() == 0
    reader.join(30)
    assert ended and ended[0].code() == grpc.StatusCode.UNAVAILABLE, ended
    assert "shutting down" in ended[0].details()
    # The front door keeps answering on the two replicas left.
    for _ in range(4):
        assert stub.GetStatus(status_pb2.GetStatusRequest(), metadata=bearer(own_cluster.admin_key)).serving
