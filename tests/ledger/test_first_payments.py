"""Accounts are created race-free: concurrent first movements onto an account that does not
exist yet (the platform fee account on a fresh database) all succeed."""

from __future__ import annotations

import threading

import pytest

from coordd.domain import ledger

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)

PAYERS = 8
ROUNDS = 25


def _fresh_ledger(server) -> None:
    """An empty ledger, then each payer's escrow (deposit + hold); no fee account yet."""
    for table in ("ledger_posting", "ledger_entry", "ledger_account"):
        server.rt.store.db.execute_sql(f"DELETE FROM {table}")
    with server.rt.store.write() as tx:
        for payer in range(PAYERS):
            ledger.deposit(tx, f"payer{payer}", 1_000, f"dep-{payer}")
            ledger.hold(tx, f"payer{payer}", 1_000, f"jobs/{payer}")


def _pay(server, payer: int, barrier: threading.Barrier, failures: list[str]) -> None:
    barrier.wait()
    try:
        with server.rt.store.write() as tx:
            ledger.post(
                tx,
                "job.payment",
                f"jobs/{payer}",
                [
                    (ledger.held_account(f"payer{payer}"), -1_000),
                    (ledger.available_account(f"worker{payer}"), 950),
                    (ledger.PLATFORM_FEES, 50),
                ],
            )
    except Exception as exc:  # collected: the assertion below names every failure
        failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        server.rt.store.close_thread_connection()  # back to the pool


def test_concurrent_first_payments_all_succeed_and_credit_the_new_fee_account(server):
    failures: list[str] = []
    for _ in range(ROUNDS):
        _fresh_ledger(server)
        barrier = threading.Barrier(PAYERS)
        threads = [
            threading.Thread(target=_pay, args=(server, payer, barrier, failures)) for payer in range(PAYERS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        if failures:
            break
        rows = list(
            server.rt.store.db.execute_sql(
                "SELECT balance FROM ledger_account WHERE id = %s", (ledger.PLATFORM_FEES,)
            )
        )
        assert rows == [(50 * PAYERS,)]
        assert ledger.check_consistency() == []
    assert failures == []
