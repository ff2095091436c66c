"""coordctl against a real daemon (scheduler on): `worker run` snoozes a job whose command
exits 75 without spending its attempt, and stops a command whose job is cancelled (learned
from the heartbeat reply); `--json` works after the subcommand; `job watch --json` is JSON
lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.support.process import COORDCTL, Daemon, admin_create_user

pytestmark = pytest.mark.e2e

# Asks for a 1s snooze on its first attempt, then echoes its input.
SNOOZER = (
    "import os, sys\n"
    "if os.environ['COORDCTL_JOB_ATTEMPT'] == '1':\n"
    "    print('1')\n"
    "    sys.exit(75)\n"
    "sys.stdout.write(sys.stdin.read())\n"
)


def _env(daemon: Daemon) -> dict[str, str]:
    # PYTHONPATH: the coordctl of this checkout, not the installed one.
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "XDG_CONFIG_HOME": str(daemon.data_dir.parent / "cfg"),
    }


def _coordctl(daemon: Daemon, key: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [COORDCTL, "--target", daemon.target, "--api-key", key, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(daemon),
        stdin=subprocess.DEVNULL,
    )


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_worker_snoozes_a_job_whose_command_exits_75_and_runs_it_again_later(tmp_path):
    daemon = Daemon(tmp_path / "data").wait_ready()
    try:
        submitter = admin_create_user(daemon, "sub@example.com", "participant")["api_key_secret"]
        provider = admin_create_user(daemon, "gpu@example.com", "provider")["api_key_secret"]
        submitted = _coordctl(
            daemon,
            submitter,
            "job",
            "submit",
            "--model",
            "m",
            "--input-data",
            "hi",
            "--max-attempts",
            "1",
            "--json",
        )
        assert submitted.returncode == 0, submitted.stderr
        job = json.loads(submitted.stdout)["name"]
        worker = _coordctl(
            daemon,
            provider,
            "worker",
            "run",
            "--json",
            "--wait",
            "10",
            "--max-jobs",
            "2",
            "--",
            sys.executable,
            "-c",
            SNOOZER,
            timeout=120,
        )
        assert worker.returncode == 0, worker.stderr
        kinds = [e["event"] for e in _events(worker.stdout)]
        assert kinds.count("job claimed") == 2
        assert "job snoozed" in kinds and "job completed" in kinds
        shown = json.loads(_coordctl(daemon, submitter, "job", "get", job, "--json").stdout)
        # max_attempts 1, yet it succeeded on its second lease: the snooze spent no attempt.
        assert shown["state"] == "JOB_STATE_SUCCEEDED"
        assert [a["outcome"] for a in shown["attempts"]] == ["snoozed", "succeeded"]
        watched = _coordctl(daemon, submitter, "job", "watch", job, "--json")
        lines = watched.stdout.splitlines()
        assert lines and all(json.loads(line)["job"]["name"] == job for line in lines)  # JSON lines
        listed = _coordctl(daemon, submitter, "job", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [j["name"] for j in json.loads(listed.stdout)["jobs"]] == [job]

        admin = admin_create_user(daemon, "root@example.com", "admin")["api_key_secret"]
        capped = _coordctl(daemon, admin, "job", "limit", "set", "model", "m", "2", "--json")
        assert capped.returncode == 0, capped.stderr
        assert json.loads(capped.stdout)["limits"] == [
            {"scope": "JOB_LIMIT_SCOPE_MODEL", "key": "m", "max_running": 2}
        ]
        shown = _coordctl(daemon, admin, "job", "limit", "list")
        assert shown.returncode == 0 and "m\t2" in shown.stdout.replace("model\t", "")
    finally:
        daemon.stop()


def test_worker_stops_the_command_of_a_job_cancelled_while_running(tmp_path):
    daemon = Daemon(tmp_path / "data").wait_ready()
    try:
        submitter = admin_create_user(daemon, "sub@example.com", "participant")["api_key_secret"]
        provider = admin_create_user(daemon, "gpu@example.com", "provider")["api_key_secret"]
        job = json.loads(
            _coordctl(
                daemon,
                submitter,
                "--json",
                "job",
                "submit",
                "--model",
                "m",
                "--input-data",
                "x",
                "--heartbeat-timeout",
                "1.5",
            ).stdout
        )["name"]
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
                "--once",
                "--wait",
                "5",
                "--",
                sys.executable,
                "-c",
                "import time; time.sleep(120)",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(daemon),
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                state = json.loads(_coordctl(daemon, submitter, "--json", "job", "get", job).stdout)["state"]
                if state == "JOB_STATE_RUNNING":
                    break
                time.sleep(0.2)
            cancelled = _coordctl(daemon, submitter, "job", "cancel", job)
            assert cancelled.returncode == 0, cancelled.stderr
            out, err = worker.communicate(timeout=60)  # far less than the command's 120s sleep
        finally:
            worker.kill()
        assert worker.returncode == 0, err
        assert "job cancelled" in [e["event"] for e in _events(out)]
        shown = json.loads(_coordctl(daemon, submitter, "--json", "job", "get", job).stdout)
        assert shown["state"] == "JOB_STATE_CANCELLED"
    finally:
        daemon.stop()


def test_a_periodic_schedule_queues_one_job_per_tick_across_a_sigkill_of_the_leader(tmp_path):
    """A 1 s schedule runs on a daemon that is SIGKILLed mid-stream and replaced by another on
    the same data dir (it leads once the dead one's 2 s scheduler lease expires). Every job
    names its tick: no tick has two jobs, and every fired tick has its job."""
    env = {"COORDD_SCHEDULER_LEASE_S": "2"}
    first = Daemon(tmp_path / "data", env=env).wait_ready()
    owner = admin_create_user(first, "cron@example.com", "participant")["api_key_secret"]
    try:
        created = _coordctl(
            first,
            owner,
            "job",
            "schedule",
            "create",
            "--interval",
            "1",
            "--model",
            "m",
            "--input-data",
            "x",
            "--json",
        )
        assert created.returncode == 0, created.stderr
        name = json.loads(created.stdout)["name"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            shown = json.loads(_coordctl(first, owner, "job", "schedule", "get", name, "--json").stdout)
            if int(shown.get("ticks_fired", 0)) >= 2:
                break
            time.sleep(0.3)
    finally:
        first.stop()  # SIGKILL
    second = Daemon(tmp_path / "data", env=env).wait_ready()
    try:
        before = int(shown["ticks_fired"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            shown = json.loads(_coordctl(second, owner, "job", "schedule", "get", name, "--json").stdout)
            if int(shown.get("ticks_fired", 0)) >= before + 2:
                break
            time.sleep(0.3)
        paused = _coordctl(second, owner, "job", "schedule", "pause", name, "--json")
        assert paused.returncode == 0, paused.stderr
        final = json.loads(paused.stdout)
        assert int(final["ticks_fired"]) >= before + 2  # the new leader took over
        listed = json.loads(_coordctl(second, owner, "job", "list", "--limit", "1000", "--json").stdout)
        jobs = listed.get("jobs", [])
        keys = [j["unique_key"] for j in jobs]
        assert len(keys) == len(set(keys)) == int(final["ticks_fired"])
        assert all(k.startswith(f"{name}@") for k in keys)
    finally:
        second.stop()
