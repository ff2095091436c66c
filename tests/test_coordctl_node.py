"""coordctl node register + node agent against a real daemon: the node is UP while the
agent beats, DOWN once the agent is killed, and UP again when it restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from google.protobuf import duration_pb2

import coordd_client
from coordd_client.v1 import node_pb2
from tests.support.process import COORDCTL, Daemon, admin_create_user

pytestmark = pytest.mark.e2e
PASSWORD = "operator password 1"


def _operator_key(daemon: Daemon) -> str:
    return admin_create_user(daemon, "ops@example.com", "node_operator", password=PASSWORD)["api_key_secret"]


def _agent(daemon: Daemon, key: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            COORDCTL,
            "--target",
            daemon.target,
            "--json",
            "node",
            "agent",
            "--node-key",
            key,
            "--interval",
            "0.25",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": os.environ.get("PATH", ""), "XDG_CONFIG_HOME": str(daemon.data_dir.parent / "cfg")},
    )


def _wait_status(client, node: str, status: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.node.GetNode(node_pb2.GetNodeRequest(name=node)).node.status == status:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("mode", ["unary", "stream"])
def test_agent_keeps_the_node_up_and_its_death_is_detected(tmp_path, mode):
    daemon = Daemon(tmp_path / "data").wait_ready()
    agents: list[subprocess.Popen[str]] = []
    try:
        operator = _operator_key(daemon)
        client = coordctl_client = coordd_client.connect(daemon.target, api_key=operator)
        policy = node_pb2.HealthPolicy(
            heartbeat_interval=duration_pb2.Duration(nanos=250_000_000),
            misses=2,
            grace=duration_pb2.Duration(nanos=500_000_000),
            successes_before_up=2,
        )
        project = client.node.CreateProject(
            node_pb2.CreateProjectRequest(display_name="Fleet", slug=f"fleet-{mode}", health_policy=policy)
        ).project
        # Registering a node takes the operator's login, not an API key (node keys are API keys).
        env = {
            "PATH": os.environ.get("PATH", ""),
            "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
            "COORDCTL_PASSWORD": PASSWORD,
        }
        login = subprocess.run(
            [COORDCTL, "--target", daemon.target, "login", "--email", "ops@example.com"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert login.returncode == 0, login.stderr
        registered = subprocess.run(
            [
                COORDCTL,
                "--json",
                "node",
                "register",
                "--project",
                project.name,
                "--name",
                "box-1",
                "--label",
                "zone=a",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert registered.returncode == 0, registered.stderr
        reply = json.loads(registered.stdout)
        node, key = reply["node"]["name"], reply["api_key_secret"]
        assert reply["node"]["inventory"]["cpu_cores"] == os.cpu_count()

        extra = ("--stream",) if mode == "stream" else ()
        agents.append(_agent(daemon, key, *extra))
        assert _wait_status(client, node, node_pb2.HEALTH_STATUS_UP), "agent beats bring the node UP"
        agents[-1].send_signal(signal.SIGKILL)
        agents[-1].wait(10)
        assert _wait_status(client, node, node_pb2.HEALTH_STATUS_DOWN), "a dead agent is detected"
        agents.append(_agent(daemon, key, *extra))
        assert _wait_status(client, node, node_pb2.HEALTH_STATUS_UP), "a restarted agent brings it back"
        agents[-1].send_signal(signal.SIGTERM)
        out, _ = agents[-1].communicate(timeout=15)
        assert agents[-1].returncode == 0
        assert '"agent stopped"' in out
        coordctl_client.close()
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
        daemon.stop()
