"""coordctl notification against a real daemon: a channel is created (its secret shown
once), listed, shown, tested (the signed POST reaches a real receiver), its deliveries
listed, and deleted."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from coordd.notify import webhook
from tests.node.helpers import Receiver
from tests.support.process import COORDCTL, Daemon

pytestmark = pytest.mark.e2e


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path / "data", env={"COORDD_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true"}).wait_ready()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def receiver():
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def coordctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """As a user runs it, with the token `coordctl signup` saved."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "XDG_CONFIG_HOME": str(daemon.data_dir.parent / "cfg"),
        "COORDCTL_PASSWORD": "hook owner password",
    }
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]  # the checkout under test, not the installed one
    return subprocess.run(
        [COORDCTL, "--target", daemon.target, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_coordctl_manages_channels_and_shows_their_deliveries(daemon, receiver):
    signed = coordctl(daemon, "signup", "--email", "hooks@example.com", "--role", "node_operator")
    assert signed.returncode == 0, signed.stderr
    created = coordctl(
        daemon,
        "--json",
        "notification",
        "channel",
        "create",
        "--name",
        "ops",
        "--url",
        receiver.url,
        "--event-type",
        "node.down",
        "--event-type",
        "channel.test",
    )
    assert created.returncode == 0, created.stderr
    reply = json.loads(created.stdout)
    channel, secret = reply["channel"]["name"], reply["secret"]
    assert len(secret) >= 32 and reply["channel"]["event_types"] == ["channel.test", "node.down"]

    listed = coordctl(daemon, "notification", "channel", "list")
    assert listed.returncode == 0, listed.stderr
    [row] = [line.split("\t") for line in listed.stdout.splitlines()[1:]]
    assert row == [channel, "ops", receiver.url, "channel.test,node.down"]
    shown = coordctl(daemon, "notification", "channel", "show", channel)
    assert shown.returncode == 0 and shown.stdout.startswith(f"{channel} ops: {receiver.url}"), shown.stderr

    tested = coordctl(daemon, "--json", "notification", "channel", "test", channel)
    assert tested.returncode == 0, tested.stderr
    delivery = json.loads(tested.stdout)
    assert delivery["event_type"] == "channel.test" and delivery["state"] == "DELIVERY_STATE_PENDING"
    deadline = time.monotonic() + 30
    while not receiver.requests and time.monotonic() < deadline:
        time.sleep(0.1)
    [(headers, body)] = receiver.requests
    assert webhook.verify(secret, body, headers["x-coordd-signature"])
    assert headers["x-coordd-delivery"] == delivery["name"].split("/")[1]

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log = coordctl(daemon, "notification", "deliveries", channel)
        assert log.returncode == 0, log.stderr
        rows = [line.split("\t") for line in log.stdout.splitlines()[1:]]
        if rows and rows[0][2] == "delivered":
            break
        time.sleep(0.1)
    assert rows == [[delivery["name"], "channel.test", "delivered", "1", "204", "-"]]

    deleted = coordctl(daemon, "notification", "channel", "delete", channel)
    assert deleted.returncode == 0 and deleted.stdout.strip() == f"{channel} deleted", deleted.stderr
    gone = coordctl(daemon, "notification", "channel", "show", channel)
    assert gone.returncode == 1 and "not found" in gone.stderr
    assert coordctl(daemon, "notification", "channel", "list").stdout.splitlines()[1:] == []
