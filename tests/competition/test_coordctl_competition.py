"""coordctl competition against a real daemon: register (retry-safe), see the waitlist,
cancel, submit while running, and verify the signed results offline."""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import timestamp_pb2

import coordd_client
from coordd_client.v1 import competition_pb2 as pb
from tests.support.process import COORDCTL, Daemon, admin_create_user

pytestmark = pytest.mark.e2e


def _user(daemon: Daemon, email: str, role: str) -> tuple[str, str]:
    created = admin_create_user(daemon, email, role)
    return created["user"], created["api_key_secret"]


def _ctl(daemon: Daemon, key: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [COORDCTL, "--target", daemon.target, "--api-key", key, "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", "")},
    )
    if ok:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def _at(seconds: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(datetime.now(UTC) + timedelta(seconds=seconds))
    return out


def _wait_state(client, name: str, state: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.competition.GetCompetition(pb.GetCompetitionRequest(name=name)).competition.state == state:
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} never reached {pb.CompetitionState.Name(state)}")


def _competition(organizer, capacity: int, close_in: float, run_for: float) -> str:
    competition = organizer.competition.CreateCompetition(
        pb.CreateCompetitionRequest(
            competition=pb.Competition(
                title="CLI cup",
                capacity=capacity,
                registration_open_time=_at(-1),
                registration_close_time=_at(close_in),
                start_time=_at(close_in),
                end_time=_at(close_in + run_for),
            )
        )
    ).competition
    organizer.competition.PublishCompetition(pb.PublishCompetitionRequest(name=competition.name))
    _wait_state(organizer, competition.name, pb.COMPETITION_STATE_OPEN)
    return competition.name


def test_register_is_retry_safe_waitlists_and_cancels(tmp_path):
    daemon = Daemon(tmp_path / "data").wait_ready()
    try:
        _, organizer_key = _user(daemon, "org@example.com", "organizer")
        organizer = coordd_client.connect(daemon.target, api_key=organizer_key)
        name = _competition(organizer, capacity=1, close_in=3600, run_for=60)
        _, alice = _user(daemon, "alice@example.com", "participant")
        _, bob = _user(daemon, "bob@example.com", "participant")
        first = json.loads(_ctl(daemon, alice, "competition", "register", name).stdout)
        assert first["registration"]["state"] == "REGISTRATION_STATE_CONFIRMED" and first["created"] is True
        again = json.loads(_ctl(daemon, alice, "competition", "register", name).stdout)
        assert again["registration"]["name"] == first["registration"]["name"]
        assert again.get("created", False) is False
        waiting = json.loads(_ctl(daemon, bob, "competition", "register", name).stdout)
        assert waiting["registration"]["state"] == "REGISTRATION_STATE_WAITLISTED"
        assert waiting["registration"]["position"] == 1
        cancelled = json.loads(
            _ctl(daemon, bob, "competition", "cancel", waiting["registration"]["name"]).stdout
        )
        assert cancelled["registration"]["state"] == "REGISTRATION_STATE_CANCELLED"
        assert name in _ctl(daemon, alice, "competition", "list").stdout
        shown = json.loads(_ctl(daemon, alice, "competition", "show", name).stdout)
        assert shown["capacity"] == 1
        organizer.close()
    finally:
        daemon.stop()


def test_submit_while_running_and_verify_the_signed_results(tmp_path):
    daemon = Daemon(tmp_path / "data").wait_ready()
    try:
        _, organizer_key = _user(daemon, "org@example.com", "organizer")
        alice_id, alice = _user(daemon, "alice@example.com", "participant")
        organizer = coordd_client.connect(daemon.target, api_key=organizer_key)
        name = _competition(organizer, capacity=5, close_in=5, run_for=3)
        with coordd_client.connect(daemon.target, api_key=alice) as client:
            client.competition.Register(pb.RegisterRequest(competition=name))
        _wait_state(organizer, name, pb.COMPETITION_STATE_RUNNING)
        entry = tmp_path / "entry.txt"
        entry.write_text("my answer")
        submitted = json.loads(
            _ctl(daemon, alice, "competition", "submit", name, "--file", str(entry)).stdout
        )
        assert submitted["name"].startswith(name)
        _wait_state(organizer, name, pb.COMPETITION_STATE_ENDED)
        organizer.competition.PublishResults(
            pb.PublishResultsRequest(competition=name, ranking=[pb.RankedScore(user=alice_id, score=42.0)])
        )
        results = json.loads(_ctl(daemon, alice, "competition", "results", name).stdout)
        assert results["verified"] is True
        assert results["results"]["ranking"][0]["user"] == alice_id
        wrong_pin = _ctl(daemon, alice, "competition", "results", name, "--key-id", "0" * 16, ok=False)
        assert wrong_pin.returncode == 1 and json.loads(wrong_pin.stdout)["verified"] is False
        organizer.close()
    finally:
        daemon.stop()
