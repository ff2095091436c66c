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


def _register_node(daemon: Daemon, tmp_path, slug: str) -> tuple[coordd_client.Client, str, str, str]:
    """An operator's project with a fast health policy and one node registered through
    `coordctl login` + `coordctl node register`; returns (operator client, node name, node key,
    operator API key)."""
    operator = _operator_key(daemon)
    client = coordd_client.connect(daemon.target, api_key=operator)
    policy = node_pb2.HealthPolicy(
        heartbeat_interval=duration_pb2.Duration(nanos=250_000_000),
        misses=2,
        grace=duration_pb2.Duration(nanos=500_000_000),
        successes_before_up=2,
    )
    project = client.node.CreateProject(
        node_pb2.CreateProjectRequest(display_name="Fleet", slug=slug, health_policy=policy)
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
    assert reply["node"]["inventory"]["cpu_cores"] == os.cpu_count()
    return client, reply["node"]["name"], reply["api_key_secret"], operator


@pytest.mark.parametrize("mode", ["unary", "stream"])
def test_agent_keeps_the_node_up_and_its_death_is_detected(tmp_path, mode):
    daemon = Daemon(tmp_path / "data").wait_ready()
    agents: list[subprocess.Popen[str]] = []
    try:
        client, node, key, _ = _register_node(daemon, tmp_path, f"fleet-{mode}")
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
        client.close()
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
        daemon.stop()


@pytest.mark.parametrize("mode", ["unary", "stream"])
def test_agent_rides_out_a_daemon_kill_and_restart(tmp_path, mode):
    """The daemon is SIGKILLed under a running agent and restarted on the same address: the
    agent logs the outage, backs off, reconnects on its own and the node beats again."""
    data = tmp_path / "data"
    first = Daemon(data).wait_ready()
    second: Daemon | None = None
    agent = None
    try:
        client, node, key, operator = _register_node(first, tmp_path, f"restart-{mode}")
        client.close()
        agent = _agent(first, key, *(("--stream",) if mode == "stream" else ()))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if _last_beat(first, node, operator) is not None:
                break
            time.sleep(0.1)
        first.stop()  # SIGKILL
        time.sleep(1.0)  # the agent now fails at least one beat
        second = Daemon(data, "--listen", first.target).wait_ready()
        restarted = time.time()
        beat = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            beat = _last_beat(second, node, operator)
            if beat is not None and beat > restarted:
                break
            time.sleep(0.1)
        assert beat is not None and beat > restarted, "the agent beats the restarted daemon"
        assert agent.poll() is None, "the agent kept running through the outage"
        agent.send_signal(signal.SIGTERM)
        out, err = agent.communicate(timeout=15)
        assert agent.returncode == 0, err
        events = [json.loads(line)["event"] for line in out.splitlines() if line.startswith("{")]
        assert "daemon unreachable; retrying" in events
        assert events[-1] == "agent stopped"
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
        first.stop()
        if second is not None:
            second.stop()


def _last_beat(daemon: Daemon, node: str, operator_key: str) -> float | None:
    """The node's last heartbeat time, as the daemon reports it to the operator."""
    with coordd_client.connect(daemon.target, api_key=operator_key, timeout=5, retries=0) as client:
        got = client.node.GetNode(node_pb2.GetNodeRequest(name=node)).node
    return got.last_heartbeat_time.ToDatetime().timestamp() if got.HasField("last_heartbeat_time") else None
