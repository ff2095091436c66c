"""`coordctl login --ethereum`: Sign-In with Ethereum from the command line.

End to end: a real `coordd serve` and coordctl as separate processes (the key from a file,
from stdin and from the environment, never from an argument), then an authenticated call
with the saved session. In-process against a test server (SQLite and PostgreSQL + Redis):
what the daemon refuses (a signature by another key, a replayed nonce, an expired message,
a throttled client) comes back as a canonical status with the daemon's reason, and bad key
input is refused before anything is sent."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from coordd_client import siwe
from coordd_client.cli import main, siwe_login
from coordd_client.v1 import auth_pb2
from tests.support.process import Daemon

# The account of web3.js's documentation: a known key and its EIP-55 address.
KNOWN_KEY = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
KNOWN_ADDRESS = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"


def _key_file(path: Path, key_hex: str = KNOWN_KEY, mode: int = 0o600) -> Path:
    path.write_text("0x" + key_hex + "\n")
    path.chmod(mode)
    return path


def test_the_client_derives_the_known_address_and_signs_what_the_daemon_recovers():
    from coordd.domain.auth.siwe_message import recover_address

    key = siwe.load_private_key(KNOWN_KEY)
    assert siwe.address_of(key) == KNOWN_ADDRESS
    message = siwe.compose(
        "example.org", KNOWN_ADDRESS, "https://example.org", "abcdefgh12", "2026-01-01T00:00:00Z"
    )
    assert recover_address(message, siwe.sign(message, key)) == KNOWN_ADDRESS
    for bad in ("", "12" * 31, "zz" * 32, "00" * 32, "ff" * 32):
        with pytest.raises(siwe.BadKey):
            siwe.load_private_key(bad)


# -- end to end: two processes -----------------------------------------------------------------


def _coordctl(daemon: Daemon, home: Path, *args: str, env: dict[str, str] | None = None, stdin: str = ""):
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "XDG_CONFIG_HOME": str(home),
        # This checkout's coordctl, as the test suite runs it.
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "coordd_client.cli", "--target", daemon.target, "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        input=stdin,
    )


@pytest.mark.e2e
def test_coordctl_signs_in_with_ethereum_and_the_saved_session_authenticates(tmp_path):
    daemon = Daemon(tmp_path / "data").wait_ready()
    try:
        home = tmp_path / "home"
        key_file = _key_file(tmp_path / "eth.key")
        login = _coordctl(daemon, home, "login", "--ethereum", "--key-file", str(key_file))
        assert login.returncode == 0, login.stderr
        body = json.loads(login.stdout)
        assert body["address"] == KNOWN_ADDRESS
        assert body["user"]["email"] == KNOWN_ADDRESS.lower() + "@ethereum"
        assert KNOWN_KEY not in login.stdout + login.stderr
        config = home / "coordctl" / "config.json"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        saved = json.loads(config.read_text())
        assert saved["email"] == body["user"]["email"] and saved["target"] == daemon.target
        assert KNOWN_KEY not in config.read_text()

        who = _coordctl(daemon, home, "whoami")
        assert who.returncode == 0, who.stderr
        me = json.loads(who.stdout)
        assert me["user"]["name"] == body["user"]["name"]
        assert me["credential_kind"] == "token"

        # The same identity from stdin and from the environment: one user per address.
        piped = _coordctl(daemon, home, "login", "--ethereum", "--key-file", "-", stdin=KNOWN_KEY)
        assert piped.returncode == 0, piped.stderr
        assert json.loads(piped.stdout)["user"]["name"] == body["user"]["name"]
        other = os.urandom(32).hex()
        by_env = _coordctl(daemon, home, "login", "--ethereum", env={"COORDCTL_ETH_KEY": other})
        assert by_env.returncode == 0, by_env.stderr
        assert json.loads(by_env.stdout)["address"] == siwe.address_of(bytes.fromhex(other))
        assert json.loads(by_env.stdout)["user"]["name"] != body["user"]["name"]
    finally:
        daemon.stop()


# -- in process: refusals ----------------------------------------------------------------------


def _run(server, capsys, *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["--target", server.target, "--json", *args])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


@pytest.fixture
def home(monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home"))
    for name in ("COORDCTL_ETH_KEY", "COORDCTL_ETH_KEY_FILE", "COORDCTL_TOKEN", "COORDCTL_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


def test_login_keeps_the_pinned_coordinator_keys_and_replaces_the_token(server, capsys, home, tmp_path):
    config = home / "coordctl" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"token": "old", "coordinator_keys": {server.target: "ab" * 32}}))
    code, body = _run(server, capsys, "login", "--ethereum", "--key-file", str(_key_file(tmp_path / "k")))
    assert code == 0, body
    saved = json.loads(config.read_text())
    assert saved["coordinator_keys"] == {server.target: "ab" * 32}
    assert saved["token"] != "old"
    code, me = _run(server, capsys, "whoami")
    assert code == 0 and me["user"]["email"] == KNOWN_ADDRESS.lower() + "@ethereum"


def test_a_signature_by_another_key_is_refused_unauthenticated(server, capsys, home, monkeypatch, tmp_path):
    real_sign = siwe.sign
    monkeypatch.setattr(siwe, "sign", lambda message, key: real_sign(message, os.urandom(32)))
    code, body = _run(server, capsys, "login", "--ethereum", "--key-file", str(_key_file(tmp_path / "k")))
    assert code == 1
    assert body["error"]["code"] == "UNAUTHENTICATED" and body["error"]["reason"] == "SIWE_BAD_SIGNATURE"
    assert "not by the address the message names" in body["error"]["message"]
    assert not (home / "coordctl" / "config.json").exists(), "a refused login saves nothing"


def test_a_replayed_nonce_is_refused_unauthenticated(server, capsys, home, monkeypatch, tmp_path):
    key_file = str(_key_file(tmp_path / "k"))
    used: list[auth_pb2.CreateSiweNonceResponse] = []
    real_fetch = siwe_login.fetch_nonce

    def fetch_once(client):
        if not used:
            used.append(real_fetch(client))
        return used[0]

    monkeypatch.setattr(siwe_login, "fetch_nonce", fetch_once)
    assert _run(server, capsys, "login", "--ethereum", "--key-file", key_file)[0] == 0
    code, body = _run(server, capsys, "login", "--ethereum", "--key-file", key_file)
    assert code == 1
    assert body["error"]["code"] == "UNAUTHENTICATED" and body["error"]["reason"] == "SIWE_BAD_NONCE"
    assert "was used" in body["error"]["message"]


def test_an_expired_message_is_refused_unauthenticated(server, capsys, home, monkeypatch, tmp_path):
    real_fetch = siwe_login.fetch_nonce

    def expired(client):
        nonce = real_fetch(client)
        nonce.expire_time.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
        return nonce

    monkeypatch.setattr(siwe_login, "fetch_nonce", expired)
    code, body = _run(server, capsys, "login", "--ethereum", "--key-file", str(_key_file(tmp_path / "k")))
    assert code == 1
    assert body["error"]["code"] == "UNAUTHENTICATED" and body["error"]["reason"] == "SIWE_EXPIRED"
    assert "expired" in body["error"]["message"]


def test_a_throttled_client_is_told_when_to_retry(settings_factory, clock, capsys, home, tmp_path):
    from tests.support.server import ServerHandle

    server = ServerHandle(
        settings_factory(siwe_nonces_per_peer_per_min=0.06, siwe_nonce_burst_per_peer=1), clock
    )
    try:
        key_file = str(_key_file(tmp_path / "k"))
        assert _run(server, capsys, "login", "--ethereum", "--key-file", key_file)[0] == 0
        code, body = _run(server, capsys, "login", "--ethereum", "--key-file", key_file)
        assert code == 1
        assert body["error"]["code"] == "RESOURCE_EXHAUSTED" and body["error"]["reason"] == "SIWE_THROTTLED"
        assert "retry in" in body["error"]["message"]
    finally:
        server.stop()


def test_bad_key_input_is_refused_before_anything_is_sent(server, capsys, home, tmp_path, monkeypatch):
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    bad.chmod(0o600)
    for argv, env, expected in (
        (["--key-file", str(bad)], {}, "64 hex digits"),
        (["--key-file", str(tmp_path / "missing.key")], {}, "cannot read"),
        ([], {}, "COORDCTL_ETH_KEY"),
        ([], {"COORDCTL_ETH_KEY": "0x1234"}, "COORDCTL_ETH_KEY: the Ethereum key must be"),
    ):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit) as refused:
            main(["--target", server.target, "login", "--ethereum", *argv])
        assert expected in str(refused.value.code)
        assert "not a key" not in str(refused.value.code)
        for name in env:
            monkeypatch.delenv(name)
    assert server.call(server.rt.run(_outstanding_nonces)) == 0, "no nonce was even asked for"


def _outstanding_nonces() -> int:
    from coordd.store.auth import siwe as siwe_store

    return siwe_store.count_nonces(100)


def test_a_key_file_others_can_read_is_used_with_a_warning(server, capsys, home, tmp_path):
    key_file = _key_file(tmp_path / "k", mode=0o644)
    code = main(["--target", server.target, "login", "--ethereum", "--key-file", str(key_file)])
    captured = capsys.readouterr()
    assert code == 0
    assert "accessible by other users; chmod 600" in captured.err
    assert "logged in as" in captured.out and KNOWN_ADDRESS.lower() in captured.out


def test_login_needs_exactly_one_method(server, capsys, home):
    for argv in ([], ["--email", "a@example.com", "--ethereum"]):
        with pytest.raises(SystemExit) as refused:
            main(["--target", server.target, "login", *argv])
        assert refused.value.code == 2
    assert "one of the arguments --email --ethereum is required" in capsys.readouterr().err
