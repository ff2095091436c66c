"""The `env` fixture of the job tests: a server (scheduler off) with a funded submitter,
two providers and an admin; on teardown the ledger and the held balances must be consistent.
`env_with` builds the same with other settings (e.g. a smaller message limit)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from coordd.domain import jobs, ledger
from coordd_client.v1 import job_pb2_grpc, ledger_pb2_grpc
from tests.jobs.support import TEST_POLICY, Env, held_invariant_problems
from tests.support.server import ServerHandle


@contextlib.contextmanager
def _open_env(settings_factory, clock, **settings) -> Iterator[Env]:  # type: ignore[no-untyped-def]
    # The scheduler stays off: tests run its tasks themselves, at the moment they choose.
    server = ServerHandle(settings_factory(scheduler_enabled=False, **settings), clock)
    jobs.set_policy(server.rt, TEST_POLICY)
    try:
        _, admin = server.make_user("admin")
        alice_id, alice = server.make_user("participant")
        worker_a_id, worker_a = server.make_user("provider")
        worker_b_id, worker_b = server.make_user("provider")
        with server.rt.store.write() as tx:
            ledger.deposit(tx, alice_id, 10_000, "seed")
        yield Env(
            server,
            job_pb2_grpc.JobServiceStub(server.channel),
            ledger_pb2_grpc.LedgerServiceStub(server.channel),
            admin,
            alice_id,
            alice,
            worker_a_id,
            worker_a,
            worker_b_id,
            worker_b,
        )
        assert ledger.check_consistency() == []
        assert held_invariant_problems() == []
    finally:
        server.stop()


@pytest.fixture
def env(settings_factory, clock):
    with _open_env(settings_factory, clock) as opened:
        yield opened


@pytest.fixture
def env_with(settings_factory, clock):
    """`env_with(**settings)`: an env on a server with those settings (one per test)."""
    with contextlib.ExitStack() as stack:
        yield lambda **settings: stack.enter_context(_open_env(settings_factory, clock, **settings))
