"""coordctl job + worker against a real daemon: a worker running `python -c ...` processes a
job whose first attempt crashes; the retry succeeds, is paid once, and its attestation verifies."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.process import COORDCTL, Daemon, admin_create_user

pytestmark = pytest.mark.e2e

# Crashes on its first attempt, then reverses its input.
FLAKY = (
    "import os, sys\n"
    "if os.environ['COORDD_JOB_ATTEMPT'] == '1':\n"
    "    sys.stderr.write('simulated crash')\n"
    "    sys.exit(3)\n"
    "sys.stdout.write(sys.stdin.read()[::-1])\n"
)


def _coordctl(daemon: Daemon, key: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "XDG_CONFIG_HOME": str(daemon.data_dir.parent / "cfg")}
    return subprocess.run(
        [COORDCTL, "--target", daemon.target, "--api-key", key, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_worker_retries_a_crash_and_completes_with_a_verifiable_attestation(tmp_path):
    daemon = Daemon(tmp_path / "data").wait_ready()
    try:
        submitter = admin_create_user(daemon, "sub@example.com", "participant")["api_key_secret"]
        provider = admin_create_user(daemon, "gpu@example.com", "provider")["api_key_secret"]
        submitted = _coordctl(
            daemon,
            submitter,
            "--json",
            "job",
            "submit",
            "--model",
            "m/echo",
            "--input-data",
            "hello coordd",
            "--max-attempts",
            "3",
        )
        assert submitted.returncode == 0, submitted.stderr
        job = json.loads(submitted.stdout)["name"]

        worker = _coordctl(
            daemon,
            provider,
            "--json",
            "worker",
            "run",
            "--wait",
            "5",
            "--max-jobs",
            "2",
            "--",
            sys.executable,
            "-c",
            FLAKY,
            timeout=120,
        )
        assert worker.returncode == 0, worker.stderr
        events = [json.loads(line) for line in worker.stdout.splitlines() if line.startswith("{")]
        kinds = [e["event"] for e in events]
        assert kinds.count("job claimed") == 2
        failed = next(e for e in events if e["event"] == "job failed")
        assert "exit code 3" in failed["error"] and failed["state"] == "queued"
        assert "job completed" in kinds

        shown = json.loads(_coordctl(daemon, submitter, "--json", "job", "get", job).stdout)
        assert shown["state"] == "JOB_STATE_SUCCEEDED"
        assert len(shown["attempts"]) == 2
        import base64

        assert base64.b64decode(shown["output"]["data"]) == b"hello coordd"[::-1]
        verified = _coordctl(daemon, submitter, "--json", "job", "attestation", job)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert json.loads(verified.stdout)["verified"] is True
        watched = _coordctl(daemon, submitter, "job", "watch", job)
        assert watched.returncode == 0 and "succeeded" in watched.stdout
    finally:
        daemon.stop()


def test_sigterm_drains_the_worker_after_its_current_job(tmp_path):
    import signal
    import time

    daemon = Daemon(tmp_path / "data").wait_ready()
    try:
        submitter = admin_create_user(daemon, "sub@example.com", "participant")["api_key_secret"]
        provider = admin_create_user(daemon, "gpu@example.com", "provider")["api_key_secret"]
        jobs = [
            json.loads(
                _coordctl(
                    daemon, submitter, "--json", "job", "submit", "--model", "m", "--input-data", f"j{i}"
                ).stdout
            )["name"]
            for i in range(2)
        ]
        env = {"PATH": os.environ.get("PATH", ""), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
        slow = "import sys, time; time.sleep(2); sys.stdout.write(sys.stdin.read())"
        worker = subprocess.Popen(
            [
                COORDCTL,
                "--target",
                daemon.target,
                "--api-key",
                provider,
                "--json",
                "worker",
                "run",
                "--wait",
                "1",
                "--",
                sys.executable,
                "-c",
                slow,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        # SIGTERM once the first job is running: that job finishes and is reported; no second claim.
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline and "job claimed" not in line:
            line = worker.stdout.readline()
        assert "job claimed" in line
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, out + err
        events = [json.loads(x)["event"] for x in (line + out).splitlines() if x.startswith("{")]
        assert events == ["job claimed", "job completed", "worker stopped"], events
        states = [
            json.loads(_coordctl(daemon, submitter, "--json", "job", "get", j).stdout)["state"] for j in jobs
        ]
        assert sorted(states) == ["JOB_STATE_QUEUED", "JOB_STATE_SUCCEEDED"]
    finally:
        daemon.stop()
