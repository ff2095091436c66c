"""A real `coordd serve` process killed and restarted under a beating fleet: the restart
alone marks no node DOWN, while a node that really stopped is still detected."""

from __future__ import annotations

import threading
import time
import uuid

import grpc
import pytest

from coordd_client.v1 import auth_pb2, auth_pb2_grpc, common_pb2, node_pb2, node_pb2_grpc
from tests.node.helpers import secs
from tests.support.process import Daemon

pytestmark = pytest.mark.e2e


class Beater(threading.Thread):
    """Beats one node every `period` seconds at whatever address the daemon has now."""

    def __init__(self, key: str, target: str, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.key, self.target, self.period = key, target, period
        self.stop = threading.Event()
        self.ok = 0

    def run(self) -> None:
        target, channel = "", None
        while not self.stop.is_set():
            if target != self.target:
                if channel is not None:
                    channel.close()
                target = self.target
                channel = grpc.insecure_channel(target)
                stub = node_pb2_grpc.NodeServiceStub(channel)
            try:
                stub.Heartbeat(
                    node_pb2.HeartbeatRequest(),
                    metadata=(("authorization", f"Bearer {self.key}"),),
                    timeout=2,
                )
                self.ok += 1
            except grpc.RpcError:
                pass  # the daemon is down or restarting: keep trying
            self.stop.wait(self.period)
        if channel is not None:
            channel.close()


def test_killing_and_restarting_the_daemon_marks_no_node_down(tmp_path):
    data = tmp_path / "data"
    first = Daemon(data).wait_ready()
    beater = None
    try:
        channel = grpc.insecure_channel(first.target)
        signed = auth_pb2_grpc.AuthServiceStub(channel).SignUp(
            auth_pb2.SignUpRequest(
                email=f"op-{uuid.uuid4().hex[:6]}@example.com",
                password="correct horse battery",
                roles=[common_pb2.ROLE_NODE_OPERATOR],
            )
        )
        md = (("authorization", f"Bearer {signed.access_token}"),)
        stub = node_pb2_grpc.NodeServiceStub(channel)
        policy = node_pb2.HealthPolicy(
            heartbeat_interval=secs(1), misses=2, grace=secs(1), successes_before_up=1
        )
        project = stub.CreateProject(
            node_pb2.CreateProjectRequest(display_name="fleet", slug="fleet", health_policy=policy),
            metadata=md,
        ).project
        alive = stub.RegisterNode(
            node_pb2.RegisterNodeRequest(project=project.name, display_name="alive"), metadata=md
        )
        gone = stub.RegisterNode(
            node_pb2.RegisterNodeRequest(project=project.name, display_name="gone"), metadata=md
        )
        beater = Beater(alive.api_key_secret, first.target)
        beater.start()
        assert stub.Heartbeat(
            node_pb2.HeartbeatRequest(), metadata=(("authorization", f"Bearer {gone.api_key_secret}"),)
        )
        while beater.ok < 8:  # past one flush: both nodes UP with stored deadlines
            time.sleep(0.1)
        channel.close()
        first.stop()  # SIGKILL: no graceful shutdown, no final flush
        time.sleep(4)  # longer than the 3 s detection window: every stored deadline has passed

        second = Daemon(data).wait_ready()
        try:
            beater.target = second.target
            channel = grpc.insecure_channel(second.target)
            stub = node_pb2_grpc.NodeServiceStub(channel)
            # The node that really stopped goes DOWN once the failover grace is over...
            for _ in range(200):
                got = stub.GetNode(node_pb2.GetNodeRequest(name=gone.node.name), metadata=md).node
                if got.status == node_pb2.HEALTH_STATUS_DOWN:
                    break
                time.sleep(0.1)
            assert got.status == node_pb2.HEALTH_STATUS_DOWN, second.log()
            # ...while the one that kept beating was never DOWN.
            kept = stub.GetNode(node_pb2.GetNodeRequest(name=alive.node.name), metadata=md).node
            assert kept.status == node_pb2.HEALTH_STATUS_UP
            history = stub.ListTransitions(
                node_pb2.ListTransitionsRequest(parent=alive.node.name), metadata=md
            )
            assert [t.to_status for t in reversed(history.transitions)] == [node_pb2.HEALTH_STATUS_UP]
            channel.close()
        finally:
            second.stop()
    finally:
        if beater is not None:
            beater.stop.set()
            beater.join(5)
        first.stop()
