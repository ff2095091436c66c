"""Posting balanced entries: one conditional UPDATE per account for a whole batch, then the
journal rows, in the caller's transaction."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from coordd.core.errors import InvalidArgument
from coordd.domain.ledger.accounts import InsufficientFunds, describe_account
from coordd.store.db import Tx
from coordd.store.ledger import queries
from coordd.store.ledger.models import LedgerEntry


@dataclass(frozen=True)
class Entry:
    """One balanced movement to post: (account id, signed amount) pairs."""

    reason: str
    reference: str
    movements: tuple[tuple[str, int], ...]
    memo: str = ""


def _apply(tx: Tx, account_id: str, delta: int) -> int:
    """Adds `delta` to one account with a conditional UPDATE (creating the account on its
    first movement); returns the new balance."""
    owner, kind, allow_negative = describe_account(account_id)
    balance = queries.apply_delta_opening(account_id, delta, tx.now, owner, kind, allow_negative)
    if balance is not None:
        return balance
    raise InsufficientFunds(
        f"insufficient funds in {account_id}: {-delta} needed",
        metadata={"account": account_id, "needed": str(-delta)},
    )


def _merged(entry: Entry) -> dict[str, int]:
    merged: dict[str, int] = {}
    for account_id, amount in entry.movements:
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise InvalidArgument("ledger amounts are integers in minor units")
        describe_account(account_id)
        merged[account_id] = merged.get(account_id, 0) + amount
    merged = {a: d for a, d in merged.items() if d != 0}
    if sum(merged.values()) != 0:
        raise ValueError(f"unbalanced ledger entry for {entry.reference}: {merged}")
    if not merged:
        raise ValueError("a ledger entry needs at least one non-zero movement")
    return merged


def post_many(tx: Tx, entries: list[Entry]) -> list[LedgerEntry]:
    """Writes balanced entries in order, with one UPDATE per account for the whole batch.

    Each account's running balance after every posting is derived from its final balance,
    and must stay non-negative (for accounts that may not go negative) at every step, not
    only at the end. Accounts are updated in id order so two concurrent batches lock them in
    the same order (no deadlock on PostgreSQL).
    """
    if not entries:
        return []
    merged = [_merged(e) for e in entries]
    totals: dict[str, int] = {}
    for m in merged:
        for account_id, delta in m.items():
            totals[account_id] = totals.get(account_id, 0) + delta
    final: dict[str, int] = {}
    for account_id in sorted(totals):
        # A zero total still touches the row: that locks the account and reads its balance.
        final[account_id] = _apply(tx, account_id, totals[account_id])
    # Walk the entries backwards from the final balances to get each balance_after.
    running = dict(final)
    after: list[dict[str, int]] = [{} for _ in merged]
    for index in range(len(merged) - 1, -1, -1):
        for account_id, delta in merged[index].items():
            after[index][account_id] = running[account_id]
            running[account_id] -= delta
    for index, m in enumerate(merged):
        for account_id in m:
            if after[index][account_id] < 0 and not describe_account(account_id)[2]:
                raise InsufficientFunds(
                    f"insufficient funds in {account_id} for {entries[index].reference}",
                    metadata={"account": account_id},
                )
    ids = queries.insert_entries(tx.now, [(e.reason, e.reference, e.memo) for e in entries])
    queries.insert_postings(
        [
            (entry_id, account_id, delta, after[index][account_id])
            for index, (entry_id, m) in enumerate(zip(ids, merged, strict=True))
            for account_id, delta in sorted(m.items())
        ]
    )
    owners = sorted({o for m in merged for o in (describe_account(a)[0] for a in m) if o})
    tx.emit(
        "ledger.entry.posted",
        f"ledgerEntries/{ids[0]}",
        {
            "reason": entries[0].reason,
            "reference": entries[0].reference,
            "entries": len(ids),
            "watch_keys": [f"balances/{o}" for o in owners],
        },
    )
    return [
        LedgerEntry(id=i, reason=e.reason, reference=e.reference, memo=e.memo, create_time=tx.now)
        for i, e in zip(ids, entries, strict=True)
    ]


def post(
    tx: Tx, reason: str, reference: str, movements: Iterable[tuple[str, int]], memo: str = ""
) -> LedgerEntry:
    """Writes one balanced entry. `movements` are (account id, signed amount) pairs."""
    return post_many(tx, [Entry(reason, reference, tuple(movements), memo)])[0]
