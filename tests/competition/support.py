"""Helpers for the competition tests: a stub, a competition with sensible dates, money."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf import duration_pb2

from coordd.api.convert import ts
from coordd.domain import ledger
from coordd.store.auth.models import User
from coordd_client.v1 import competition_pb2, competition_pb2_grpc
from tests.support.server import Clock, ServerHandle, bearer

HOUR = 3600.0
DAY = 24 * HOUR


QUIET: dict[str, Any] = {"access_token_ttl_s": 60 * 86400, "scheduler_enabled": False}


@pytest.fixture(name="server")
def competition_server(settings_factory: Any, clock: Clock) -> Iterator[ServerHandle]:
    """The conftest server, with access tokens that outlive the days these tests skip
    with `clock.advance` (tokens are checked against the daemon's clock), and without the
    scheduler loop: tests run its tasks themselves, so every step is deterministic."""
    handle = ServerHandle(settings_factory(**QUIET), clock)
    try:
        yield handle
    finally:
        handle.stop()


def bulk_users(server: ServerHandle, count: int) -> list[tuple[str, str]]:
    """Participants inserted in one statement (hashing passwords would dominate); returns
    (user id, token) pairs."""
    now = datetime.now(UTC)
    rows = []
    for _ in range(count):
        tag = uuid.uuid4().hex
        rows.append(
            {
                "id": f"u{tag[:25]}",
                "email": f"{tag}@example.com",
                "email_key": f"{tag}@example.com",
                "display_name": tag[:8],
                "password_hash": "!",
                "roles": "participant",
                "create_time": now,
            }
        )
    with server.rt.store.write():
        for start in range(0, count, 200):
            User.insert_many(rows[start : start + 200]).execute()
    return [(r["id"], server.rt.tokens.issue(r["id"], ["participant"], now)[0]) for r in rows]


def stub(server: ServerHandle) -> competition_pb2_grpc.CompetitionServiceStub:
    return competition_pb2_grpc.CompetitionServiceStub(server.channel)


def spec(now: datetime, capacity: int = 10, **fields: Any) -> competition_pb2.Competition:
    """Registration open since a minute ago, closes in 1 h, starts in 2 days, lasts a day."""
    values: dict[str, Any] = {
        "title": "Spring cup",
        "description": "a test competition",
        "tags": ["chess"],
        "capacity": capacity,
        "registration_open_time": ts(now - timedelta(minutes=1)),
        "registration_close_time": ts(now + timedelta(hours=1)),
        "start_time": ts(now + timedelta(days=2)),
        "end_time": ts(now + timedelta(days=3)),
    }
    for key in ("offer_hold_duration", "reminder_lead"):
        if key in fields and isinstance(fields[key], int | float):
            fields[key] = duration_pb2.Duration(seconds=int(fields[key]))
    values.update(fields)
    return competition_pb2.Competition(**values)


def create(
    server: ServerHandle, token: str, publish: bool = True, capacity: int = 10, **fields: Any
) -> competition_pb2.Competition:
    svc = stub(server)
    comp = svc.CreateCompetition(
        competition_pb2.CreateCompetitionRequest(competition=spec(server.rt.now(), capacity, **fields)),
        metadata=bearer(token),
    ).competition
    if publish:
        comp = svc.PublishCompetition(
            competition_pb2.PublishCompetitionRequest(name=comp.name), metadata=bearer(token)
        ).competition
    return comp


def register(server: ServerHandle, token: str, comp_name: str, key: str = "") -> competition_pb2.Registration:
    meta = bearer(token, **({"idempotency-key": key} if key else {}))
    return (
        stub(server)
        .Register(competition_pb2.RegisterRequest(competition=comp_name), metadata=meta)
        .registration
    )


def get(server: ServerHandle, token: str, comp_name: str) -> competition_pb2.Competition:
    return (
        stub(server)
        .GetCompetition(competition_pb2.GetCompetitionRequest(name=comp_name), metadata=bearer(token))
        .competition
    )


def fund(server: ServerHandle, user_id: str, amount: int) -> None:
    with server.rt.store.write() as tx:
        ledger.deposit(tx, user_id, amount, f"test-deposit/{user_id}")


def balance(user_id: str) -> tuple[int, int]:
    b = ledger.balance(user_id)
    return b.available, b.held


def state_name(value: int) -> str:
    return competition_pb2.CompetitionState.Name(value).removeprefix("COMPETITION_STATE_")


def reg_state(value: int) -> str:
    return competition_pb2.RegistrationState.Name(value).removeprefix("REGISTRATION_STATE_")
