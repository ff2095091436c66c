"""`coordd serve --processes N`: a supervisor and N real serving children on one port, on a
fresh PostgreSQL database, driven as an operator drives it (signals, kill, a second daemon)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from coordd.supervisor import process_count
from coordd_client.v1 import status_pb2, status_pb2_grpc
from tests.support import infra
from tests.support.process import FAST_KDF_ENV, Daemon

pytestmark = pytest.mark.e2e
_COORDD = (sys.executable, "-m", "coordd")


@pytest.fixture
def pg_url() -> Iterator[str]:
    infra.require("postgresql")
    with infra.fresh_pg_database() as url:
        yield url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _supervisor(tmp_path: Path, url: str, processes: int = 2, **env: str) -> Daemon:
    return Daemon(tmp_path / "data", "--processes", str(processes), "--database-url", url, env=env)


def _shut(daemon: Daemon) -> None:
    """Cleanup: SIGTERM (every child drains), SIGKILL only if that does not end it."""
    if daemon.proc.poll() is None:
        daemon.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.proc.wait(30)
    daemon.stop()


def _admin_key(daemon: Daemon, url: str) -> str:
    out = subprocess.run(
        [
            *_COORDD,
            *("admin", "create-user", "--database-url", url, "--data-dir", str(daemon.data_dir)),
            *("--email", "ops@example.com", "--role", "admin"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
            **FAST_KDF_ENV,
        },
    )
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["api_key_secret"])


def _instance_on_a_new_connection(target: str, key: str) -> str:
    """GetStatus over a connection of its own (a local subchannel pool: no sharing), so the
    kernel picks a child for it afresh."""
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        reply = status_pb2_grpc.StatusServiceStub(channel).GetStatus(
            status_pb2.GetStatusRequest(), metadata=[("authorization", f"Bearer {key}")], timeout=10
        )
    return str(reply.instance_id)


def _pid(instance_id: str) -> int:
    return int(instance_id.split(":")[1])  # host:pid:random


def _children(daemon: Daemon) -> set[int]:
    path = Path(f"/proc/{daemon.proc.pid}/task/{daemon.proc.pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def _instances(daemon: Daemon, key: str, want: int, tries: int = 300) -> set[str]:
    seen: set[str] = set()
    for _ in range(tries):
        seen.add(_instance_on_a_new_connection(daemon.target, key))
        if len(seen) >= want:
            break
    return seen


def _log_lines(daemon: Daemon) -> list[dict]:
    """The JSON log objects of the supervisor and its children, in order (the processes
    share one file; other output, e.g. grpc's own, is skipped)."""
    text, decoder, found, at = daemon.log(), json.JSONDecoder(), [], 0
    while (at := text.find("{", at)) >= 0:
        try:
            obj, end = decoder.raw_decode(text, at)
        except ValueError:
            at += 1
            continue
        if isinstance(obj, dict) and "event" in obj:
            found.append(obj)
        at = end
    return found


def _wait(predicate, timeout: float = 30) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def test_both_children_answer_on_one_port_each_with_its_own_instance_id(tmp_path, pg_url):
    metrics_port = _free_port()
    daemon = _supervisor(tmp_path, pg_url, COORDD_METRICS_PORT=str(metrics_port)).wait_ready()
    try:
        key = _admin_key(daemon, pg_url)
        calls = 0
        seen: set[str] = set()
        for _ in range(300):
            seen.add(_instance_on_a_new_connection(daemon.target, key))
            calls += 1
            if len(seen) == 2 and calls >= 20:
                break
        assert len(seen) == 2, f"new connections reach both children: {seen}"
        assert {_pid(i) for i in seen} == _children(daemon), "the answering processes are the children"
        assert daemon.proc.pid not in {_pid(i) for i in seen}, "the supervisor itself serves no RPC"

        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        info = [line for line in text.splitlines() if line.startswith("coordd_instance_info{")]
        assert sorted(i for i in seen if any(f'instance_id="{i}"' in line for line in info)) == sorted(seen)
        assert len(info) == 2, "one instance series per live child, on the supervisor's metrics port"
        served = [
            line
            for line in text.splitlines()
            if line.startswith("coordd_rpcs_total{")
            and "StatusService/GetStatus" in line
            and 'code="OK"' in line
        ]
        assert len(served) == 1 and float(served[0].rsplit(" ", 1)[1]) == calls, (
            "counters summed over children"
        )
    finally:
        _shut(daemon)


def test_a_killed_child_is_restarted_and_answers_again(tmp_path, pg_url):
    daemon = _supervisor(tmp_path, pg_url).wait_ready()
    try:
        key = _admin_key(daemon, pg_url)
        before = _children(daemon)
        assert len(before) == 2
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        assert _wait(lambda: len(_children(daemon) - before) == 1), "a new child replaces the killed one"
        replacement = (_children(daemon) - before).pop()
        survivors = {_pid(i) for i in _instances(daemon, key, 2)}
        assert survivors == (before - {victim}) | {replacement}, "the restarted child serves on the port"
        assert daemon.proc.poll() is None, "one crash does not stop the supervisor"
        assert "child exited; restarting" in daemon.log()
    finally:
        _shut(daemon)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_drains_every_child_and_the_supervisor_exits_0(tmp_path, pg_url, sig):
    daemon = _supervisor(tmp_path, pg_url).wait_ready()
    children = _children(daemon)
    assert len(children) == 2
    daemon.proc.send_signal(sig)
    assert daemon.proc.wait(30) == 0
    daemon.stop()
    assert not any(_alive(pid) for pid in children), "no child outlives its supervisor"
    lines = _log_lines(daemon)
    events = [line["event"] for line in lines]
    assert events.count("shutting down") == 2 and events.count("stopped") == 2, "each child drained"
    assert events[-1] == "supervisor stopped" and lines[-1]["clean"] is True


def test_a_killed_supervisor_leaves_no_child_serving(tmp_path, pg_url):
    daemon = _supervisor(tmp_path, pg_url).wait_ready()
    children = _children(daemon)
    daemon.proc.kill()
    daemon.stop()
    assert _wait(lambda: not any(_alive(pid) for pid in children)), (
        "children drain when their lifeline closes"
    )
    assert "stopped" in [line["event"] for line in _log_lines(daemon)]


def test_children_that_keep_crashing_stop_the_supervisor_with_a_failure(tmp_path, pg_url):
    daemon = _supervisor(tmp_path, pg_url).wait_ready()
    try:
        killed: set[int] = set()
        for _ in range(5):
            assert _wait(lambda: bool(_children(daemon) - killed) or daemon.proc.poll() is not None)
            if daemon.proc.poll() is not None:
                break
            victim = min(_children(daemon) - killed)
            killed.add(victim)
            os.kill(victim, signal.SIGKILL)
        assert daemon.proc.wait(30) == 1
        assert "children keep crashing; giving up" in daemon.log()
    finally:
        _shut(daemon)


def test_an_unrelated_daemon_cannot_join_the_port(tmp_path, pg_url):
    daemon = _supervisor(tmp_path, pg_url).wait_ready()
    try:
        lone = Daemon(tmp_path / "lone", "--listen", daemon.target)  # single process, SQLite
        assert lone.proc.wait(30) == 2
        lone.stop()
        assert f"cannot listen on {daemon.target}" in lone.log() and "Traceback" not in lone.log()

        other = Daemon(
            tmp_path / "other", "--processes", "2", "--database-url", pg_url, "--listen", daemon.target
        )
        assert other.proc.wait(30) == 2, "a second supervisor is refused before it starts any child"
        other.stop()
        assert f"cannot listen on {daemon.target}: Address already in use" in other.log()
        assert "child started" not in other.log()

        forged = subprocess.run(
            [
                *(*_COORDD, "serve", "--database-url", pg_url, "--data-dir", str(tmp_path / "f")),
                *("--listen", daemon.target, "--child-reservation-fd", "0"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert forged.returncode == 2, "a would-be child without its supervisor's reservation is refused"
        assert "not started by a coordd supervisor" in forged.stderr or "reservation" in forged.stderr
        assert len(_children(daemon)) == 2 and daemon.proc.poll() is None, "the supervisor is untouched"
    finally:
        _shut(daemon)


def test_sqlite_refuses_processes_with_one_line(tmp_path):
    daemon = Daemon(tmp_path / "data", "--processes", "2")
    code = daemon.proc.wait(30)
    daemon.stop()
    assert code == 2
    out = daemon.log().strip()
    assert (
        out
        == "coordd: --processes needs PostgreSQL (set database_url): a SQLite file is served by one process"
    )


def test_a_supervisor_refuses_to_serve_the_web_pages_from_every_child(tmp_path, pg_url):
    """N children cannot share one HTTP port: the pages are one process's job."""
    daemon = _supervisor(tmp_path, pg_url, COORDD_HTTP_LISTEN="127.0.0.1:0")
    code = daemon.proc.wait(30)
    daemon.stop()
    assert code == 2
    assert "the web pages are served by one process" in daemon.log()


def test_processes_0_means_one_per_available_core():
    assert process_count(0) == len(os.sched_getaffinity(0))
    assert process_count(3) == 3
