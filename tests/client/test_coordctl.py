"""coordctl as a user runs it: a subprocess against a real `coordd serve`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.process import Daemon

pytestmark = pytest.mark.e2e
# The console script the package installs, exactly as a user runs it.
COORDCTL = str(Path(sys.executable).parent / "coordctl")


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path / "data").wait_ready()
    try:
        yield d
    finally:
        d.stop()


def coordctl(daemon, home, *args, password=None):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "XDG_CONFIG_HOME": str(home)}
    if password:
        env["COORDCTL_PASSWORD"] = password
    return subprocess.run(
        [COORDCTL, "--target", daemon.target, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_signup_saves_a_private_token_and_whoami_uses_it(daemon, tmp_path):
    home = tmp_path / "home"
    signed = coordctl(
        daemon,
        home,
        "--json",
        "signup",
        "--email",
        "cli@example.com",
        "--role",
        "provider",
        password="correct horse battery",
    )
    assert signed.returncode == 0, signed.stderr
    assert json.loads(signed.stdout)["user"]["email"] == "cli@example.com"
    config = home / "coordctl" / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    me = coordctl(daemon, home, "--json", "whoami")
    assert me.returncode == 0, me.stderr
    body = json.loads(me.stdout)
    assert body["user"]["email"] == "cli@example.com"
    assert body["effective_roles"] == ["ROLE_PROVIDER"]
    human = coordctl(daemon, home, "whoami")
    assert "cli@example.com" in human.stdout and "provider" in human.stdout
    status = coordctl(daemon, home, "--json", "status")
    assert json.loads(status.stdout)["database_backend"] == "DATABASE_BACKEND_SQLITE"
    assert coordctl(daemon, home, "logout").returncode == 0
    anonymous = coordctl(daemon, home, "whoami")
    assert anonymous.returncode == 1
    assert "UNAUTHENTICATED" in anonymous.stderr


def test_errors_are_readable_and_machine_parsable(daemon, tmp_path):
    home = tmp_path / "home"
    bad = coordctl(daemon, home, "signup", "--email", "nope", password="short")
    assert bad.returncode == 1
    assert "INVALID_ARGUMENT" in bad.stderr and "email:" in bad.stderr and "Traceback" not in bad.stderr
    as_json = coordctl(daemon, home, "--json", "login", "--email", "x@example.com", password="wrong password")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["error"]["reason"] == "BAD_CREDENTIALS"
