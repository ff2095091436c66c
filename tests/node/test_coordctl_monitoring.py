"""coordctl's monitoring commands against a real daemon, as an operator runs them: uptime
(with a month), incidents and ack, maintenance windows, silences, the monitoring policy,
the SLA report as CSV, and rewards."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import time
from datetime import UTC, datetime

import pytest
from google.protobuf import duration_pb2

import coordd_client
from coordd_client.v1 import node_pb2
from tests.support.process import COORDCTL, Daemon

pytestmark = pytest.mark.e2e


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path / "data").wait_ready()
    try:
        yield d
    finally:
        d.stop()


def run(daemon: Daemon, *args: str, json_out: bool = True) -> object:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "XDG_CONFIG_HOME": str(daemon.data_dir.parent / "cfg"),
        "COORDCTL_PASSWORD": "operator password 1",
    }
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]  # the checkout under test
    flags = ["--json"] if json_out else []
    done = subprocess.run(
        [COORDCTL, "--target", daemon.target, *flags, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return json.loads(done.stdout) if json_out else done.stdout


def test_coordctl_drives_node_monitoring(daemon):
    run(daemon, "signup", "--email", "ops@example.com", "--role", "node_operator")
    token = json.loads((daemon.data_dir.parent / "cfg" / "coordctl" / "config.json").read_text())["token"]
    client = coordd_client.connect(daemon.target, token=token)
    policy = node_pb2.HealthPolicy(
        heartbeat_interval=duration_pb2.Duration(nanos=250_000_000),
        misses=2,
        grace=duration_pb2.Duration(nanos=500_000_000),
    )
    project = client.node.CreateProject(
        node_pb2.CreateProjectRequest(display_name="Fleet", slug="fleet", health_policy=policy)
    ).project.name
    registered = client.node.RegisterNode(node_pb2.RegisterNodeRequest(project=project, display_name="box"))
    node = registered.node.name
    with coordd_client.connect(daemon.target, api_key=registered.api_key_secret) as as_node:
        for _ in range(2):
            as_node.node.Heartbeat(node_pb2.HeartbeatRequest())
    deadline = time.monotonic() + 30  # silent now: DOWN within about a second
    while client.node.GetNode(node_pb2.GetNodeRequest(name=node)).node.status != node_pb2.HEALTH_STATUS_DOWN:
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.1)

    month = datetime.now(UTC).strftime("%Y-%m")
    uptime = run(daemon, "node", "uptime", node, "--month", month)
    assert [w["label"] for w in uptime["windows"]] == ["24h", "7d", "30d", month]
    [incident] = run(daemon, "node", "incidents", node, "--open")["incidents"]
    acked = run(daemon, "node", "ack", incident["name"])
    assert acked["acknowledged_by"].startswith("users/")

    window = run(daemon, "node", "maintenance", "create", node, "--start-in", "3600", "--duration", "600")
    assert window["target"] == node
    assert [w["name"] for w in run(daemon, "node", "maintenance", "list", node)["maintenance_windows"]] == [
        window["name"]
    ]

    silence = run(
        daemon,
        "node",
        "silence",
        "create",
        project,
        "--label",
        "zone=a",
        "--duration",
        "600",
        "--reason",
        "moving racks",
    )
    assert silence["label_key"] == "zone" and silence["active"]
    assert [s["reason"] for s in run(daemon, "node", "silence", "list", project)["silences"]] == [
        "moving racks"
    ]
    assert not run(daemon, "node", "silence", "end", silence["name"]).get("active", False)

    changed = run(daemon, "node", "policy", "set", project, "--flap-changes", "3", "--repeat-every", "600")
    assert changed["monitoring_policy"]["flap_changes"] == 3
    shown = run(daemon, "node", "policy", "show", project)["monitoring_policy"]
    assert shown["flap_changes"] == 3 and shown["repeat_every"] == "600s"

    report = run(daemon, "node", "sla", project, "--month", month, "--csv", json_out=False)
    table = list(csv.DictReader(io.StringIO(str(report))))
    assert [t["name"] for t in table] == ["box", "all 1 nodes"] and table[0]["incidents"] == "1"
    assert float(table[0]["uptime_percent"]) < 100

    assert run(daemon, "node", "rewards") == {"points": 0, "entries": 0}
    client.close()
