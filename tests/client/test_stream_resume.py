"""Server streams that survive their server: `resume_stream` (sync and asyncio) and
`coordctl job watch` re-open a stream cut by a daemon killed and restarted on the same port,
directly (UNAVAILABLE) and behind nginx (INTERNAL: "Received RST_STREAM")."""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import coordd_client
import coordd_client.aio
from coordd_client.client import is_resumable, resume_stream
from coordd_client.errors import NotFound, Unavailable
from coordd_client.v1 import job_pb2
from tests.support import infra
from tests.support.process import COORDCTL, Daemon, admin_create_user

pytestmark = pytest.mark.e2e


class Cluster:
    """One daemon on a fixed address, killed (SIGKILL) and restarted on it as needed."""

    def __init__(self, tmp_path: Path) -> None:
        self.data = tmp_path / "data"
        self.daemons = [Daemon(self.data).wait_ready()]
        self.target = self.daemons[0].target
        user = admin_create_user(self.daemons[0], "worker@example.com", "participant", "provider")
        self.key = str(user["api_key_secret"])

    def kill(self) -> None:
        self.daemons[-1].stop()

    def restart(self) -> None:
        self.daemons.append(Daemon(self.data, "--listen", self.target).wait_ready())

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


def _submit(client: coordd_client.Client) -> job_pb2.Job:
    request = job_pb2.SubmitJobRequest(
        kind=job_pb2.JOB_KIND_INFERENCE, model_ref="hf://org/model@1", input=job_pb2.Payload(data=b"prompt")
    )
    return client.job.SubmitJob(request).job


def _run_the_job(client: coordd_client.Client) -> None:
    leased = client.job.ClaimJobs(job_pb2.ClaimJobsRequest(max_jobs=1)).jobs
    assert len(leased) == 1
    client.job.CompleteJob(
        job_pb2.CompleteJobRequest(lease=leased[0].lease, output=job_pb2.Payload(data=b"ok"))
    )


def _follow(stream, updates: queue.Queue) -> None:  # type: ignore[no-untyped-def]
    try:
        for update in stream:
            updates.put(update.job.state)
            if update.job.state == job_pb2.JOB_STATE_SUCCEEDED:
                return
    except Exception as exc:  # handed to the test thread
        updates.put(exc)


def _next(updates: queue.Queue) -> int:
    item = updates.get(timeout=60)
    assert not isinstance(item, Exception), item
    return int(item)


def test_a_watch_resumes_after_its_daemon_is_killed_and_restarted(cluster):
    client = coordd_client.connect(cluster.target, api_key=cluster.key)
    job = _submit(client)
    resumed: list[grpc.RpcError] = []
    stream = resume_stream(
        lambda: client.job.WatchJob(job_pb2.WatchJobRequest(name=job.name), timeout=None),
        on_resume=lambda error, _delay: resumed.append(error),
    )
    updates: queue.Queue = queue.Queue()
    follower = threading.Thread(target=_follow, args=(stream, updates), daemon=True)
    follower.start()
    assert _next(updates) == job_pb2.JOB_STATE_QUEUED

    cluster.kill()
    cluster.restart()
    assert _next(updates) == job_pb2.JOB_STATE_QUEUED, "the re-opened stream starts with the current state"
    _run_the_job(client)
    states = [_next(updates)]
    while states[-1] != job_pb2.JOB_STATE_SUCCEEDED:
        states.append(_next(updates))
    follower.join(10)
    assert resumed and all(isinstance(e, Unavailable) for e in resumed), resumed
    assert stream.resumes == len(resumed)
    client.close()


def test_errors_that_are_not_an_outage_are_raised_at_once(cluster):
    client = coordd_client.connect(cluster.target, api_key=cluster.key)
    stream = resume_stream(
        lambda: client.job.WatchJob(job_pb2.WatchJobRequest(name="jobs/nope"), timeout=None)
    )
    with pytest.raises(NotFound):
        list(stream)
    assert stream.resumes == 0

    job = _submit(client)
    gone = resume_stream(
        lambda: client.job.WatchJob(job_pb2.WatchJobRequest(name=job.name), timeout=None), attempts=2
    )
    iterator = iter(gone)
    assert next(iterator).job.state == job_pb2.JOB_STATE_QUEUED
    cluster.kill()
    with pytest.raises(Unavailable):
        next(iterator)
    assert gone.resumes == 2, "a daemon that stays away ends the watch after `attempts` re-opens"
    client.close()


def test_coordctl_job_watch_rides_out_a_daemon_restart(cluster):
    client = coordd_client.connect(cluster.target, api_key=cluster.key)
    job = _submit(client)
    env = {"PATH": os.environ.get("PATH", ""), "XDG_CONFIG_HOME": str(cluster.data.parent / "home")}
    env["PYTHONUNBUFFERED"] = "1"  # each update line as it is printed
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")  # this checkout's client
    watch = subprocess.Popen(
        [COORDCTL, "--target", cluster.target, "--api-key", cluster.key, "job", "watch", job.name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert watch.stdout is not None
        first = watch.stdout.readline()
        assert "queued" in first, first
        cluster.kill()
        cluster.restart()
        _run_the_job(client)
        out, err = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0, err
    assert out.splitlines()[-1].startswith(f"{job.name} succeeded")
    assert "reconnecting" in err
    client.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def nginx(cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    """nginx (grpc_pass) in front of the daemon, as in a replicated deployment."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        if infra.IN_CI:
            pytest.fail("nginx is not installed (CI=true: .ci/run installs it; this test must run)")
        pytest.skip("nginx is not installed")
    root = tmp_path / "nginx"
    root.mkdir()
    port = _free_port()
    temp = " ".join(
        f"{kind}_temp_path {root}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (root / "nginx.conf").write_text(
        f"""daemon off; worker_processes 1; pid {root}/nginx.pid; error_log {root}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off; {temp}
  server {{
    listen 127.0.0.1:{port} http2;
    location / {{ grpc_pass grpc://{cluster.target}; grpc_read_timeout 1h; grpc_send_timeout 1h; }}
  }}
}}
"""
    )
    proc = subprocess.Popen(
        [binary, "-p", str(root), "-c", str(root / "nginx.conf"), "-e", str(root / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, (root / "error.log").read_text()
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_an_async_watch_behind_nginx_resumes_when_the_replica_dies(cluster, nginx):
    """nginx answers the dead backend with RST_STREAM(INTERNAL_ERROR): INTERNAL, resumable."""

    async def scenario() -> tuple[list[int], list[grpc.RpcError]]:
        resumed: list[grpc.RpcError] = []
        states: list[int] = []
        async with coordd_client.aio.connect(nginx, api_key=cluster.key) as client:
            job = (
                await client.job.SubmitJob(
                    job_pb2.SubmitJobRequest(
                        kind=job_pb2.JOB_KIND_INFERENCE,
                        model_ref="hf://m@1",
                        input=job_pb2.Payload(data=b"x"),
                    )
                )
            ).job
            stream = coordd_client.aio.resume_stream(
                lambda: client.job.WatchJob(job_pb2.WatchJobRequest(name=job.name), timeout=None),
                on_resume=lambda error, _delay: resumed.append(error),
            )
            async for update in stream:
                states.append(update.job.state)
                if len(states) == 1:
                    await asyncio.to_thread(cluster.kill)
                    await asyncio.to_thread(cluster.restart)
                elif len(states) == 2:
                    leased = (await client.job.ClaimJobs(job_pb2.ClaimJobsRequest(max_jobs=1))).jobs
                    await client.job.CompleteJob(
                        job_pb2.CompleteJobRequest(lease=leased[0].lease, output=job_pb2.Payload(data=b"ok"))
                    )
                if update.job.state == job_pb2.JOB_STATE_SUCCEEDED:
                    break
        return states, resumed

    states, resumed = asyncio.run(asyncio.wait_for(scenario(), 90))
    assert states[:2] == [job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_QUEUED]
    assert states[-1] == job_pb2.JOB_STATE_SUCCEEDED
    assert resumed, "the stream was cut and re-opened"
    cut = resumed[0]
    assert cut.code() == grpc.StatusCode.INTERNAL and "RST_STREAM" in cut.details(), cut
    assert all(is_resumable(e) for e in resumed)


def test_only_outages_and_proxy_resets_count_as_resumable():
    class Error(grpc.RpcError):
        def __init__(self, code: grpc.StatusCode, details: str) -> None:
            self._code, self._details = code, details

        def code(self) -> grpc.StatusCode:
            return self._code

        def details(self) -> str:
            return self._details

    assert is_resumable(Error(grpc.StatusCode.UNAVAILABLE, "Socket closed"))
    assert is_resumable(
        Error(grpc.StatusCode.INTERNAL, "Stream removed (Received RST_STREAM with error code 2)")
    )
    assert not is_resumable(Error(grpc.StatusCode.INTERNAL, "a bug"))
    assert not is_resumable(Error(grpc.StatusCode.CANCELLED, "Locally cancelled by application!"))
    assert not is_resumable(Error(grpc.StatusCode.PERMISSION_DENIED, "no"))
