"""LedgerService: balances, the journal, and admin deposits."""

from __future__ import annotations

from typing import Any

from coordd.api.convert import parse_name, ts
from coordd.core.paging import PageRequest
from coordd.core.principal import require_user
from coordd.domain import ledger
from coordd.runtime import Runtime
from coordd_client.v1 import ledger_pb2, ledger_pb2_grpc


def balance_to_proto(balance: ledger.Balance) -> ledger_pb2.Balance:
    return ledger_pb2.Balance(owner=f"users/{balance.owner}", available=balance.available, held=balance.held)


def entry_to_proto(view: ledger.EntryView) -> ledger_pb2.LedgerEntry:
    entry = view.entry
    return ledger_pb2.LedgerEntry(
        name=f"ledgerEntries/{entry.id}",
        reason=entry.reason,
        reference=entry.reference,
        memo=entry.memo,
        postings=[
            ledger_pb2.Posting(account=p.account_id, amount=p.amount, balance_after=p.balance_after)
            for p in view.postings
        ],
        create_time=ts(entry.create_time),
    )


def _owner(name: str, field: str = "owner") -> str:
    return parse_name(name, "users", field) if name else ""


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def GetBalance(
        self, request: ledger_pb2.GetBalanceRequest, context: Any
    ) -> ledger_pb2.GetBalanceResponse:
        who = require_user()
        balance = await self.rt.run(ledger.get_balance, who, _owner(request.owner))
        return ledger_pb2.GetBalanceResponse(balance=balance_to_proto(balance))

    async def ListEntries(
        self, request: ledger_pb2.ListEntriesRequest, context: Any
    ) -> ledger_pb2.ListEntriesResponse:
        who = require_user()
        owner = _owner(request.owner)
        page_request = PageRequest.of(request.page_size, request.page_token)
        page = await self.rt.run(ledger.list_entries, who, owner, page_request)
        return ledger_pb2.ListEntriesResponse(
            entries=[entry_to_proto(v) for v in page.items], next_page_token=page.next_token
        )

    async def Deposit(self, request: ledger_pb2.DepositRequest, context: Any) -> ledger_pb2.DepositResponse:
        require_user()
        owner = parse_name(request.owner, "users", "owner")
        view, balance = await self.rt.run(
            ledger.deposit_funds, self.rt, owner, request.amount, request.reference, request.memo
        )
        return ledger_pb2.DepositResponse(entry=entry_to_proto(view), balance=balance_to_proto(balance))
