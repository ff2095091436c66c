"""Agents and the daemon agree on reconnecting: real `coordctl node agent` processes beat
a real daemon that is killed and restarted on the same address. The daemon tells agents
how long they may wait between reconnect attempts (a third of its restart grace), so
after 10 s away no live node goes DOWN; after 40 s away, the agents that really stopped
meanwhile are DOWN and the live ones still never were."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

import coordd_client
from coordd_client.v1 import auth_pb2, common_pb2, node_pb2
from tests.node.helpers import secs
from tests.support.process import COORDCTL, Daemon

pytestmark = pytest.mark.e2e
NODES = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _agent(target: str, key: str, cfg: str) -> subprocess.Popen[str]:
    env = {"PATH": os.environ.get("PATH", ""), "XDG_CONFIG_HOME": cfg}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]  # the checkout under test
    return subprocess.Popen(
        [COORDCTL, "--target", target, "--json", "node", "agent", "--node-key", key],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def _statuses(client: coordd_client.Client, names: list[str]) -> list[int]:
    return [client.node.GetNode(node_pb2.GetNodeRequest(name=n)).node.status for n in names]


def _downs(client: coordd_client.Client, name: str) -> int:
    reply = client.node.ListTransitions(node_pb2.ListTransitionsRequest(parent=name, page_size=100))
    return sum(t.to_status == node_pb2.HEALTH_STATUS_DOWN for t in reply.transitions)


def _wait(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except coordd_client.CoorddError:
            pass  # the daemon is still starting
        time.sleep(0.2)
    return False


def test_agents_ride_out_a_10s_daemon_outage_and_dead_ones_are_found_after_40s(tmp_path):
    data, port = tmp_path / "data", _free_port()
    target = f"127.0.0.1:{port}"
    cfg = str(tmp_path / "cfg")
    daemon = Daemon(data, "--listen", target).wait_ready()
    agents: list[subprocess.Popen[str]] = []
    try:
        with coordd_client.connect(target) as anonymous:
            signed = anonymous.auth.SignUp(
                auth_pb2.SignUpRequest(
                    email="ops@example.com",
                    password="correct horse battery",
                    roles=[common_pb2.ROLE_NODE_OPERATOR],
                )
            )
        client = coordd_client.connect(target, token=signed.access_token)
        policy = node_pb2.HealthPolicy(heartbeat_interval=secs(1), misses=2, grace=secs(1))
        project = client.node.CreateProject(
            node_pb2.CreateProjectRequest(display_name="fleet", slug="fleet", health_policy=policy)
        ).project
        names, keys = [], []
        for i in range(NODES):
            reply = client.node.RegisterNode(
                node_pb2.RegisterNodeRequest(project=project.name, display_name=f"n{i}")
            )
            names.append(reply.node.name)
            keys.append(reply.api_key_secret)
        with coordd_client.connect(target, api_key=keys[0]) as as_node:
            first = as_node.node.Heartbeat(node_pb2.HeartbeatRequest())
        assert first.restart_grace.ToTimedelta().total_seconds() == 3.0  # one 3 s window
        assert first.reconnect_backoff_max.ToTimedelta().total_seconds() == 1.0  # a third of it
        agents = [_agent(target, key, cfg) for key in keys]
        up = node_pb2.HEALTH_STATUS_UP
        assert _wait(lambda: _statuses(client, names) == [up] * NODES, 60), daemon.log()
        time.sleep(2)  # past a flush: the stored deadlines are current
        # Node 0's first beat (the unary call above) made it PENDING before its agent ran: a
        # slow agent start can let that lapse into a DOWN. Only what the restarts do counts.
        downs_before = [_downs(client, n) for n in names]

        # 1. Away for 10 s: longer than the 3 s window, and than the agents' default backoff
        # would allow them to be back in time.
        daemon.stop()  # SIGKILL
        time.sleep(10)
        daemon = Daemon(data, "--listen", target).wait_ready()
        time.sleep(8)  # the grace (3 s) is long over
        assert _wait(lambda: _statuses(client, names) == [up] * NODES, 10)
        assert [_downs(client, n) for n in names] == downs_before, "no false DOWN after a 10 s restart"

        # 2. Away for 40 s, and two agents really stop meanwhile.
        daemon.stop()
        for agent in agents[:2]:
            agent.send_signal(signal.SIGTERM)
            agent.wait(15)
        time.sleep(40)
        daemon = Daemon(data, "--listen", target).wait_ready()
        down = node_pb2.HEALTH_STATUS_DOWN
        expected = [down, down] + [up] * (NODES - 2)
        assert _wait(lambda: _statuses(client, names) == expected, 20), daemon.log()
        time.sleep(3)
        assert _statuses(client, names) == expected
        stopped = [1, 1] + [0] * (NODES - 2)  # one DOWN each for the two stopped agents
        after = [_downs(client, n) for n in names]
        assert after == [b + s for b, s in zip(downs_before, stopped, strict=True)]
        client.close()
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait(10)
        daemon.stop()
