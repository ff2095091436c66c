"""LedgerService and the ledger module: double entry, no negative balances, integer amounts."""

from __future__ import annotations

import threading

import grpc
import pytest

from coordd.core.errors import FailedPrecondition, InvalidArgument
from coordd.domain import ledger
from coordd.store.ledger.models import LedgerAccount, LedgerEntry, LedgerPosting
from coordd_client.v1 import ledger_pb2, ledger_pb2_grpc
from tests.helpers import rpc_error
from tests.support.server import bearer


@pytest.fixture
def stub(server):
    stub = ledger_pb2_grpc.LedgerServiceStub(server.channel)
    yield stub
    assert ledger.check_consistency() == []


def _deposit(server, stub, admin, user_id, amount, key=None):
    extra = {"idempotency-key": key} if key else {}
    return stub.Deposit(
        ledger_pb2.DepositRequest(owner=f"users/{user_id}", amount=amount, reference="pay-1"),
        metadata=bearer(admin, **extra),
    )


def test_deposit_credits_available_and_is_idempotent(server, stub):
    _, admin = server.make_user("admin")
    user_id, token = server.make_user("participant")
    first = _deposit(server, stub, admin, user_id, 1_000, key="dep-1")
    again = _deposit(server, stub, admin, user_id, 1_000, key="dep-1")
    assert first.SerializeToString() == again.SerializeToString()
    assert first.balance.available == 1_000 and first.balance.held == 0
    assert [(p.account, p.amount, p.balance_after) for p in first.entry.postings] == [
        (f"users/{user_id}/available", 1_000, 1_000)
    ]
    mine = stub.GetBalance(ledger_pb2.GetBalanceRequest(), metadata=bearer(token)).balance
    assert (mine.owner, mine.available, mine.held) == (f"users/{user_id}", 1_000, 0)
    assert LedgerEntry.select().count() == 1
    # Without a key a second deposit is a second deposit.
    _deposit(server, stub, admin, user_id, 500)
    assert stub.GetBalance(ledger_pb2.GetBalanceRequest(), metadata=bearer(token)).balance.available == 1_500


def test_deposit_needs_admin_and_valid_input(server, stub):
    user_id, token = server.make_user("participant", "provider", "organizer")
    _, admin = server.make_user("admin")
    failure = rpc_error(grpc.StatusCode.PERMISSION_DENIED, _deposit, server, stub, token, user_id, 10)
    assert failure.reason == "ROLE_REQUIRED"
    for amount in (0, -5):
        failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, _deposit, server, stub, admin, user_id, amount)
        assert "amount" in failure.violations
    rpc_error(grpc.StatusCode.NOT_FOUND, _deposit, server, stub, admin, "nobody0000000000000000000", 10)
    rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.Deposit,
        ledger_pb2.DepositRequest(owner="jobs/x", amount=5),
        metadata=bearer(admin),
    )
    assert LedgerEntry.select().count() == 0
    assert LedgerAccount.select().count() == 0


def test_balances_are_private_except_to_admins(server, stub):
    alice, alice_token = server.make_user("participant")
    _, bob_token = server.make_user("participant")
    _, admin = server.make_user("admin")
    _deposit(server, stub, admin, alice, 70)
    failure = rpc_error(
        grpc.StatusCode.NOT_FOUND,
        stub.GetBalance,
        ledger_pb2.GetBalanceRequest(owner=f"users/{alice}"),
        metadata=bearer(bob_token),
    )
    assert failure.reason == "NOT_FOUND"
    rpc_error(
        grpc.StatusCode.NOT_FOUND,
        stub.ListEntries,
        ledger_pb2.ListEntriesRequest(owner=f"users/{alice}"),
        metadata=bearer(bob_token),
    )
    seen = stub.GetBalance(ledger_pb2.GetBalanceRequest(owner=f"users/{alice}"), metadata=bearer(admin))
    assert seen.balance.available == 70
    own = stub.GetBalance(ledger_pb2.GetBalanceRequest(owner=f"users/{alice}"), metadata=bearer(alice_token))
    assert own.balance.available == 70
    rpc_error(grpc.StatusCode.UNAUTHENTICATED, stub.GetBalance, ledger_pb2.GetBalanceRequest())


def test_list_entries_pages_newest_first_and_shows_only_own_postings(server, stub):
    payer, payer_token = server.make_user("participant")
    payee, _ = server.make_user("provider")
    _, admin = server.make_user("admin")
    _deposit(server, stub, admin, payer, 1_000)
    with server.rt.store.write() as tx:
        ledger.hold(tx, payer, 300, "jobs/a", reason="job.hold")
        ledger.release(tx, payer, payee, 300, "jobs/a", fee=30, reason="job.payment")
        ledger.hold(tx, payer, 100, "jobs/b", reason="job.hold")
        ledger.refund(tx, payer, 100, "jobs/b", reason="job.refund")
    seen = []
    token = ""
    while True:
        page = stub.ListEntries(
            ledger_pb2.ListEntriesRequest(page_size=2, page_token=token), metadata=bearer(payer_token)
        )
        seen.extend(page.entries)
        token = page.next_page_token
        if not token:
            break
    assert [e.reason for e in seen] == ["job.refund", "job.hold", "job.payment", "job.hold", "deposit"]
    payment = seen[2]
    assert payment.reference == "jobs/a"
    assert [(p.account, p.amount) for p in payment.postings] == [(f"users/{payer}/held", -300)]
    bal = stub.GetBalance(ledger_pb2.GetBalanceRequest(), metadata=bearer(payer_token)).balance
    assert (bal.available, bal.held) == (700, 0)
    assert ledger.balance(payee).available == 270
    assert LedgerAccount.get_by_id(ledger.PLATFORM_FEES).balance == 30
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ListEntries,
        ledger_pb2.ListEntriesRequest(
            owner=f"users/{payee}", page_size=2, page_token=page_token_of(stub, payer_token)
        ),
        metadata=bearer(admin),
    )
    assert failure.reason == "BAD_PAGE_TOKEN"


def page_token_of(stub, token):
    return stub.ListEntries(
        ledger_pb2.ListEntriesRequest(page_size=1), metadata=bearer(token)
    ).next_page_token


def test_insufficient_funds_rolls_back_the_whole_transaction(server, stub):
    user_id, _ = server.make_user("participant")
    _, admin = server.make_user("admin")
    _deposit(server, stub, admin, user_id, 50)
    entries = LedgerEntry.select().count()
    with pytest.raises(ledger.InsufficientFunds) as info, server.rt.store.write() as tx:
        ledger.hold(tx, user_id, 30, "jobs/1")
        ledger.hold(tx, user_id, 30, "jobs/2")  # only 20 left: the first hold is undone too
    assert isinstance(info.value, FailedPrecondition)
    assert info.value.reason == "INSUFFICIENT_FUNDS"
    assert ledger.balance(user_id) == ledger.Balance(user_id, 50, 0)
    assert LedgerEntry.select().count() == entries
    with pytest.raises(ledger.InsufficientFunds), server.rt.store.write() as tx:
        ledger.refund(tx, user_id, 1, "jobs/none")  # nothing held
    with pytest.raises(ledger.InsufficientFunds), server.rt.store.write() as tx:
        ledger.transfer(tx, "someone-without-money", user_id, 1, "x")
    assert ledger.balance("someone-without-money") == ledger.Balance("someone-without-money", 0, 0)


def test_amounts_are_integers_and_entries_must_balance(server, stub):
    user_id, _ = server.make_user("participant")
    for bad in (1.5, True, 0, -1, ledger.MAX_AMOUNT + 1):
        with pytest.raises(InvalidArgument), server.rt.store.write() as tx:
            ledger.deposit(tx, user_id, bad, "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError), server.rt.store.write() as tx:
        ledger.post(tx, "broken", "x", [(ledger.available_account(user_id), 5)])
    with pytest.raises(ValueError), server.rt.store.write() as tx:
        ledger.post(tx, "broken", "x", [("somewhere/else", 5), (ledger.PLATFORM_EXTERNAL, -5)])
    assert LedgerEntry.select().count() == 0


def test_fee_is_integer_basis_points_rounded_down():
    assert ledger.fee_for(999, 250) == 24
    assert ledger.fee_for(1, 500) == 0
    assert ledger.fee_for(10_000, 10_000) == 10_000


def test_concurrent_holds_never_overdraw(server, stub):
    user_id, _ = server.make_user("participant")
    with server.rt.store.write() as tx:
        ledger.deposit(tx, user_id, 100, "seed")
    ok, refused = [], []

    def spend(i: int) -> None:
        try:
            with server.rt.store.write() as tx:
                ledger.hold(tx, user_id, 7, f"jobs/{i}")
            ok.append(i)
        except ledger.InsufficientFunds:
            refused.append(i)
        finally:
            server.rt.store.close_thread_connection()

    threads = [threading.Thread(target=spend, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 100 // 7 and len(refused) == 24 - 100 // 7
    assert ledger.balance(user_id) == ledger.Balance(user_id, 100 % 7, 7 * (100 // 7))


def test_consistency_check_detects_tampering(server, stub):
    user_id, _ = server.make_user("participant")
    with server.rt.store.write() as tx:
        ledger.deposit(tx, user_id, 40, "seed")
    assert ledger.check_consistency() == []
    LedgerAccount.update(balance=41).where(LedgerAccount.id == ledger.available_account(user_id)).execute()
    assert any("postings sum to 40" in p for p in ledger.check_consistency())
    LedgerAccount.update(balance=40).where(LedgerAccount.id == ledger.available_account(user_id)).execute()
    LedgerPosting.update(amount=39).where(
        LedgerPosting.account == ledger.available_account(user_id)
    ).execute()
    problems = ledger.check_consistency()
    assert any("sums to" in p for p in problems)
    LedgerPosting.update(amount=40).where(
        LedgerPosting.account == ledger.available_account(user_id)
    ).execute()


def test_post_many_checks_every_intermediate_balance_and_matches_single_posts(server, stub):
    user_id, _ = server.make_user("participant")
    with server.rt.store.write() as tx:
        ledger.deposit(tx, user_id, 50, "seed")
    # The batch nets to +10 on available, but the first entry alone would overdraw it.
    with pytest.raises(ledger.InsufficientFunds), server.rt.store.write() as tx:
        ledger.post_many(
            tx, [ledger.hold_entry(user_id, 60, "jobs/x"), ledger.deposit_entry(user_id, 70, "late")]
        )
    assert ledger.balance(user_id) == ledger.Balance(user_id, 50, 0)
    with server.rt.store.write() as tx:
        entries = ledger.post_many(
            tx,
            [
                ledger.hold_entry(user_id, 20, "jobs/a"),
                ledger.hold_entry(user_id, 30, "jobs/b"),
                ledger.refund_entry(user_id, 20, "jobs/a"),
            ],
        )
    assert [e.reference for e in entries] == ["jobs/a", "jobs/b", "jobs/a"]
    after = {
        (p.entry_id, p.account_id): p.balance_after
        for p in LedgerPosting.select().where(LedgerPosting.entry.in_([e.id for e in entries]))
    }
    available, held = ledger.available_account(user_id), ledger.held_account(user_id)
    assert [after[(e.id, available)] for e in entries] == [30, 0, 20]
    assert [after[(e.id, held)] for e in entries] == [20, 50, 30]
    assert ledger.balance(user_id) == ledger.Balance(user_id, 20, 30)
