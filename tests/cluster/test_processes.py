"""One replica of the cluster is `coordd serve --processes 2`: its two children share its port
and behave as two more replicas (own instance ids, one scheduler leader for the whole cluster)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from coordd_client.v1 import status_pb2, status_pb2_grpc
from tests.cluster.cluster import Cluster, bearer, running_cluster, wait_for
from tests.cluster.test_replicas import drain_jobs_through_the_front
from tests.support import infra

pytestmark = pytest.mark.e2e


@pytest.fixture
def mixed_cluster(tmp_path: Path) -> Iterator[Cluster]:
    infra.require("postgresql")
    with (
        infra.fresh_pg_database() as url,
        running_cluster(tmp_path, url, replica_args={0: ("--processes", "2")}) as c,
    ):
        yield c


def _instance_on_a_new_connection(cluster: Cluster, target: str) -> str:
    # A connection stays with one child: a fresh, unshared channel may land on the other.
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        return stub.GetStatus(
            status_pb2.GetStatusRequest(), metadata=bearer(cluster.admin_key), timeout=5
        ).instance_id


def test_a_replica_with_two_processes_serves_from_both_and_the_cluster_keeps_one_leader(
    mixed_cluster: Cluster,
):
    shared_port = mixed_cluster.replicas[0].target
    seen: set[str] = set()

    def both_answered() -> bool:
        seen.add(_instance_on_a_new_connection(mixed_cluster, shared_port))
        return len(seen) >= 2

    wait_for("both children of the --processes 2 replica answering", both_answered, timeout=30, every=0.05)
    others = {mixed_cluster.status(r).instance_id for r in mixed_cluster.replicas[1:]}
    assert not seen & others
    leaders = {mixed_cluster.status(r).scheduler.leader_instance_id for r in mixed_cluster.replicas}
    assert len(leaders) == 1 and next(iter(leaders)) in seen | others
    drain_jobs_through_the_front(mixed_cluster, jobs_n=80, workers=4)
