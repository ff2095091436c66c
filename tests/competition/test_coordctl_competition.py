"""coordctl competition against a real daemon: register (retry-safe), see the waitlist,
cancel, submit while running, and verify the signed results offline."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import timestamp_pb2

import coordd_client
from coordd_client.v1 import ceremony_pb2
from coordd_client.v1 import competition_pb2 as pb
from tests.support.process import COORDCTL, Daemon, admin_create_user

pytestmark = pytest.mark.e2e
# coordctl runs with this checkout's client package (PYTHONPATH), nothing else of ours.
_ENV = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}


def _user(daemon: Daemon, email: str, role: str) -> tuple[str, str]:
    created = admin_create_user(daemon, email, role)
    return created["user"], created["api_key_secret"]


def _ctl(daemon: Daemon, key: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [COORDCTL, "--target", daemon.target, "--api-key", key, "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_ENV,
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


def _ctl_json_last(daemon: Daemon, key: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Like _ctl, with `--json` after the subcommand instead of before it."""
    out = subprocess.run(
        [COORDCTL, "--target", daemon.target, "--api-key", key, *args, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_ENV,
    )
    if ok:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_groups_teams_transfer_tickets_check_in_and_json_lines(tmp_path):
    daemon = Daemon(tmp_path / "data").wait_ready()
    try:
        _, organizer_key = _user(daemon, "org@example.com", "organizer")
        organizer = coordd_client.connect(daemon.target, api_key=organizer_key)
        # Starts in an hour: check-in (from 24 h before the start) is open at once.
        competition = organizer.competition.CreateCompetition(
            pb.CreateCompetitionRequest(
                competition=pb.Competition(
                    title="CLI teams",
                    capacity=4,
                    registration_open_time=_at(-1),
                    registration_close_time=_at(3000),
                    start_time=_at(3600),
                    end_time=_at(7200),
                    team_min_size=2,
                    team_max_size=2,
                )
            )
        ).competition
        name = competition.name
        organizer.competition.PublishCompetition(pb.PublishCompetitionRequest(name=name))
        _wait_state(organizer, name, pb.COMPETITION_STATE_OPEN)
        users = {
            who: _user(daemon, f"{who}@example.com", "participant") for who in ("ann", "ben", "cy", "dee")
        }
        (ann_id, ann), (ben_id, _), (cy_id, cy), (dee_id, dee) = users.values()
        group = json.loads(
            _ctl_json_last(daemon, ann, "competition", "register-group", name, ann_id, ben_id).stdout
        )
        assert [r["state"] for r in group["registrations"]] == ["REGISTRATION_STATE_CONFIRMED"] * 2
        assert group["group"].startswith(f"{name}/groups/")
        team = json.loads(_ctl_json_last(daemon, cy, "competition", "team", "create", name, "Owls").stdout)[
            "team"
        ]
        _ctl_json_last(daemon, cy, "competition", "team", "invite", team["name"], dee_id)
        _ctl_json_last(daemon, dee, "competition", "team", "accept", team["name"])
        registered = json.loads(
            _ctl_json_last(daemon, cy, "competition", "team", "register", team["name"]).stdout
        )
        assert {r["user"] for r in registered["registrations"]} == {cy_id, dee_id}
        # Ann gives her seat to a new user; the old holder's ticket no longer checks in.
        eve_id, eve = _user(daemon, "eve@example.com", "participant")
        seat = group["registrations"][0]["name"]
        old_ticket, new_ticket = tmp_path / "old.json", tmp_path / "new.json"
        _ctl_json_last(daemon, ann, "competition", "ticket", seat, "--out", str(old_ticket))
        moved = json.loads(_ctl_json_last(daemon, ann, "competition", "transfer", seat, eve_id).stdout)
        assert moved["registration"]["user"] == eve_id and moved["registration"]["payer"] == ann_id
        _ctl_json_last(daemon, eve, "competition", "ticket", seat, "--out", str(new_ticket))
        listed = json.loads(
            _ctl_json_last(daemon, organizer_key, "competition", "registrations", name).stdout
        )
        assert len(listed["registrations"]) == 4
        key = organizer.ceremony.GetCoordinatorKey(ceremony_pb2.GetCoordinatorKeyRequest())
        offline = _ctl_json_last(
            daemon,
            organizer_key,
            "competition",
            "verify-ticket",
            str(new_ticket),
            "--public-key",
            base64.b64encode(key.public_key).decode(),
            "--competition",
            name,
        )
        assert json.loads(offline.stdout)["ticket"]["user"] == eve_id
        refused = _ctl_json_last(
            daemon, organizer_key, "competition", "check-in", "--ticket", str(old_ticket), ok=False
        )
        assert (
            refused.returncode == 1 and json.loads(refused.stdout)["error"]["reason"] == "TICKET_SUPERSEDED"
        )
        checked = json.loads(
            _ctl_json_last(
                daemon, organizer_key, "competition", "check-in", "--ticket", str(new_ticket)
            ).stdout
        )
        assert checked["registration"]["check_in_time"]
        assert (
            organizer.competition.GetCompetition(
                pb.GetCompetitionRequest(name=name)
            ).competition.checked_in_count
            == 1
        )
        # The human output of the same commands.
        for args in (
            ("competition", "registrations", name),
            ("competition", "team", "list", name),
            ("competition", "team", "show", team["name"]),
            ("competition", "check-in", "--ticket", str(new_ticket)),
            ("competition", "verify-ticket", str(new_ticket)),
        ):
            plain = subprocess.run(
                [COORDCTL, "--target", daemon.target, "--api-key", organizer_key, *args],
                capture_output=True,
                text=True,
                timeout=60,
                env=_ENV,
            )
            assert plain.returncode == 0 and plain.stdout.strip(), plain.stdout + plain.stderr
            assert "Traceback" not in plain.stderr
        # The live view prints JSON lines: one compact document per line.
        watch = subprocess.Popen(
            [
                COORDCTL,
                "--target",
                daemon.target,
                "--api-key",
                organizer_key,
                "competition",
                "watch",
                name,
                "--json",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=_ENV,
        )
        try:
            line = watch.stdout.readline()
            assert line.endswith("}\n") and "\n" not in line[:-1]
            assert json.loads(line)["competition"]["checked_in_count"] == 1
        finally:
            watch.kill()
            watch.wait()
        organizer.close()
    finally:
        daemon.stop()
