"""The ledger: double-entry, append-only balances in integer minor units.

Each user has two accounts: `available` (spendable) and `held` (escrowed for a job or a
competition). Every movement is one balanced entry with a reason and a reference; user
balances never go negative (a conditional UPDATE plus a CHECK constraint); the external
account, where deposits come from, is the only one allowed below zero.

The movement functions (`deposit`, `hold`, `refund`, `release`, `transfer`, `post`) take
the `Tx` of a transaction the caller already opened with `rt.store.write()`, so money moves
in the same transaction as the state change it pays for (a job insert, a completion, a
registration). They raise `InsufficientFunds` (FAILED_PRECONDITION), which rolls the whole
transaction back. They never open a transaction of their own. For many movements at once
(a batch of job completions), build `Entry` values with the `*_entry` helpers and pass them
to `post_many`: one UPDATE per account for the whole batch instead of one per movement.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import peewee

from coordd.core.errors import FailedPrecondition, InvalidArgument, NotFound, Violations
from coordd.core.principal import Principal
from coordd.runtime import Runtime
from coordd.store import ledger_queries
from coordd.store.db import Tx
from coordd.store.ledger_models import LedgerAccount, LedgerEntry, LedgerPosting
from coordd.store.models import User
from coordd.store.paging import Page, PageRequest, decode_token, encode_token

AVAILABLE = "available"
HELD = "held"
FEES = "fees"
EXTERNAL = "external"

PLATFORM_FEES = "platform/fees"
PLATFORM_EXTERNAL = "platform/external"

# Far below 2**63 so that sums of many postings cannot overflow a BIGINT.
MAX_AMOUNT = 10**15


class InsufficientFunds(FailedPrecondition):
    default_reason = "INSUFFICIENT_FUNDS"


@dataclass(frozen=True)
class Balance:
    owner: str
    available: int
    held: int


def available_account(user_id: str) -> str:
    return f"users/{user_id}/{AVAILABLE}"


def held_account(user_id: str) -> str:
    return f"users/{user_id}/{HELD}"


def _describe(account_id: str) -> tuple[str, str, bool]:
    """(owner, kind, allow_negative) from an account id."""
    if account_id == PLATFORM_FEES:
        return "", FEES, False
    if account_id == PLATFORM_EXTERNAL:
        return "", EXTERNAL, True
    parts = account_id.split("/")
    if len(parts) == 3 and parts[0] == "users" and parts[1] and parts[2] in (AVAILABLE, HELD):
        return parts[1], parts[2], False
    raise ValueError(f"not a ledger account: {account_id!r}")


def check_amount(amount: int, field: str = "amount", allow_zero: bool = False) -> None:
    """Amounts are integers in the smallest unit; floats and bools are refused outright."""
    v = Violations()
    if not isinstance(amount, int) or isinstance(amount, bool):
        v.add(field, "must be an integer number of minor units")
    elif amount < 0 or (amount == 0 and not allow_zero):
        v.add(field, "must be positive" if not allow_zero else "must not be negative")
    elif amount > MAX_AMOUNT:
        v.add(field, f"at most {MAX_AMOUNT}")
    v.raise_if_any()


@dataclass(frozen=True)
class Entry:
    """One balanced movement to post: (account id, signed amount) pairs."""

    reason: str
    reference: str
    movements: tuple[tuple[str, int], ...]
    memo: str = ""


def _ensure_account(tx: Tx, account_id: str) -> None:
    owner, kind, allow_negative = _describe(account_id)
    LedgerAccount.insert(
        id=account_id,
        owner=owner,
        kind=kind,
        balance=0,
        allow_negative=allow_negative,
        create_time=tx.now,
        update_time=tx.now,
    ).on_conflict_ignore().execute()


def _apply(tx: Tx, account_id: str, delta: int) -> int:
    """Adds `delta` to one account with a conditional UPDATE; returns the new balance."""
    for _ in range(2):
        rows = list(
            LedgerAccount.update(balance=LedgerAccount.balance + delta, update_time=tx.now)
            .where(
                (LedgerAccount.id == account_id)
                & ((LedgerAccount.balance + delta >= 0) | (LedgerAccount.allow_negative == True))  # noqa: E712
            )
            .returning(LedgerAccount.balance)
            .execute()
        )
        if rows:
            return int(rows[0].balance)
        if LedgerAccount.select(LedgerAccount.id).where(LedgerAccount.id == account_id).exists():
            break
        # First movement on this account: create it, then apply the same conditional update.
        _ensure_account(tx, account_id)
    raise InsufficientFunds(
        f"insufficient funds in {account_id}: {-delta} needed",
        metadata={"account": account_id, "needed": str(-delta)},
    )


def _merged(entry: Entry) -> dict[str, int]:
    merged: dict[str, int] = {}
    for account_id, amount in entry.movements:
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise InvalidArgument("ledger amounts are integers in minor units")
        _describe(account_id)
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
            if after[index][account_id] < 0 and not _describe(account_id)[2]:
                raise InsufficientFunds(
                    f"insufficient funds in {account_id} for {entries[index].reference}",
                    metadata={"account": account_id},
                )
    ids = ledger_queries.insert_entries(tx.now, [(e.reason, e.reference, e.memo) for e in entries])
    ledger_queries.insert_postings(
        [
            (entry_id, account_id, delta, after[index][account_id])
            for index, (entry_id, m) in enumerate(zip(ids, merged, strict=True))
            for account_id, delta in sorted(m.items())
        ]
    )
    owners = sorted({o for m in merged for o in (_describe(a)[0] for a in m) if o})
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


def deposit_entry(user_id: str, amount: int, reference: str, memo: str = "") -> Entry:
    check_amount(amount)
    return Entry(
        "deposit", reference, ((PLATFORM_EXTERNAL, -amount), (available_account(user_id), amount)), memo
    )


def hold_entry(user_id: str, amount: int, reference: str, reason: str = "hold") -> Entry:
    check_amount(amount)
    return Entry(reason, reference, ((available_account(user_id), -amount), (held_account(user_id), amount)))


def refund_entry(user_id: str, amount: int, reference: str, reason: str = "refund") -> Entry:
    check_amount(amount)
    return Entry(reason, reference, ((held_account(user_id), -amount), (available_account(user_id), amount)))


def release_entry(
    payer_id: str, payee_id: str, amount: int, reference: str, fee: int = 0, reason: str = "payment"
) -> Entry:
    check_amount(amount)
    check_amount(fee, "fee", allow_zero=True)
    if fee > amount:
        raise InvalidArgument("the fee cannot exceed the amount")
    return Entry(
        reason,
        reference,
        (
            (held_account(payer_id), -amount),
            (available_account(payee_id), amount - fee),
            (PLATFORM_FEES, fee),
        ),
    )


def transfer_entry(
    from_user: str, to_user: str, amount: int, reference: str, reason: str = "transfer"
) -> Entry:
    check_amount(amount)
    return Entry(
        reason, reference, ((available_account(from_user), -amount), (available_account(to_user), amount))
    )


def deposit(tx: Tx, user_id: str, amount: int, reference: str, memo: str = "") -> LedgerEntry:
    """Money from outside the platform into a user's available balance."""
    return post_many(tx, [deposit_entry(user_id, amount, reference, memo)])[0]


def hold(tx: Tx, user_id: str, amount: int, reference: str, reason: str = "hold") -> LedgerEntry:
    """Escrows `amount` of the user's available balance; InsufficientFunds when short."""
    return post_many(tx, [hold_entry(user_id, amount, reference, reason)])[0]


def refund(tx: Tx, user_id: str, amount: int, reference: str, reason: str = "refund") -> LedgerEntry:
    """Returns held money to the same user's available balance."""
    return post_many(tx, [refund_entry(user_id, amount, reference, reason)])[0]


def release(
    tx: Tx,
    payer_id: str,
    payee_id: str,
    amount: int,
    reference: str,
    fee: int = 0,
    reason: str = "payment",
) -> LedgerEntry:
    """Pays held money out: `amount - fee` to the payee's available balance, `fee` to the platform."""
    return post_many(tx, [release_entry(payer_id, payee_id, amount, reference, fee, reason)])[0]


def transfer(
    tx: Tx, from_user: str, to_user: str, amount: int, reference: str, reason: str = "transfer"
) -> LedgerEntry:
    """Available to available between two users (not exposed over the API)."""
    return post_many(tx, [transfer_entry(from_user, to_user, amount, reference, reason)])[0]


def fee_for(amount: int, fee_bps: int) -> int:
    """Platform fee in basis points, rounded down: integer arithmetic only."""
    return amount * fee_bps // 10_000


# -- reads and the API's operations ------------------------------------------------------


def balance(user_id: str) -> Balance:
    rows = {
        a.kind: a.balance
        for a in LedgerAccount.select(LedgerAccount.kind, LedgerAccount.balance).where(
            LedgerAccount.id.in_([available_account(user_id), held_account(user_id)])
        )
    }
    return Balance(user_id, rows.get(AVAILABLE, 0), rows.get(HELD, 0))


def _resolve_owner(who: Principal, owner: str) -> str:
    """Users see their own ledger; admins anyone's."""
    target = owner or who.user_id
    if target != who.user_id and not who.is_admin:
        # Someone else's ledger is reported as missing: existence is not leaked.
        raise NotFound(f"users/{target} not found", metadata={"resource": f"users/{target}"})
    if target != who.user_id and User.get_or_none(User.id == target) is None:
        raise NotFound(f"users/{target} not found", metadata={"resource": f"users/{target}"})
    return target


def get_balance(who: Principal, owner: str) -> Balance:
    return balance(_resolve_owner(who, owner))


@dataclass(frozen=True)
class EntryView:
    """An entry as one owner sees it: only the postings on that owner's accounts."""

    entry: LedgerEntry
    postings: list[LedgerPosting]


def list_entries(who: Principal, owner: str, page: PageRequest) -> Page[EntryView]:
    """Newest first, keyset-paged by entry id."""
    target = _resolve_owner(who, owner)
    accounts = [available_account(target), held_account(target)]
    filters = {"owner": target}
    query = (
        LedgerEntry.select(LedgerEntry.id)
        .join(LedgerPosting)
        .where(LedgerPosting.account.in_(accounts))
        .distinct()
    )
    if page.token:
        query = query.where(LedgerEntry.id < int(decode_token(page.token, filters)))
    ids = [r.id for r in query.order_by(LedgerEntry.id.desc()).limit(page.size + 1)]
    more = len(ids) > page.size
    ids = ids[: page.size]
    entries = {e.id: e for e in LedgerEntry.select().where(LedgerEntry.id.in_(ids))} if ids else {}
    postings: dict[int, list[LedgerPosting]] = {i: [] for i in ids}
    if ids:
        for p in (
            LedgerPosting.select()
            .where(LedgerPosting.entry.in_(ids) & LedgerPosting.account.in_(accounts))
            .order_by(LedgerPosting.id)
        ):
            postings[p.entry_id].append(p)
    items = [EntryView(entries[i], postings[i]) for i in ids]
    return Page(items, encode_token(ids[-1], filters) if more else "")


def deposit_funds(
    rt: Runtime, user_id: str, amount: int, reference: str, memo: str
) -> tuple[EntryView, Balance]:
    """Admin deposit (the API's Deposit); idempotency comes from the interceptor."""
    v = Violations()
    check_amount_into(v, amount)
    if len(reference) > 200:
        v.add("reference", "at most 200 characters")
    if len(memo) > 500:
        v.add("memo", "at most 500 characters")
    v.raise_if_any()
    if User.get_or_none(User.id == user_id) is None:
        raise NotFound(f"users/{user_id} not found", metadata={"resource": f"users/{user_id}"})
    with rt.store.write() as tx:
        entry = deposit(tx, user_id, amount, reference or f"deposits/{user_id}", memo)
    postings = list(
        LedgerPosting.select().where(
            (LedgerPosting.entry == entry.id) & (LedgerPosting.account == available_account(user_id))
        )
    )
    return EntryView(entry, postings), balance(user_id)


def check_amount_into(v: Violations, amount: int, field: str = "amount", allow_zero: bool = False) -> None:
    """Like check_amount, adding to a request's other violations instead of raising."""
    try:
        check_amount(amount, field, allow_zero)
    except InvalidArgument as exc:
        v.items.extend(exc.violations)


# -- consistency ---------------------------------------------------------------------------


def check_consistency() -> list[str]:
    """Every invariant of the ledger, as a list of problems (empty when consistent):

    the sum of all postings is zero; every entry balances; every account's cached balance
    equals the sum of its postings; no account that may not go negative is negative.
    """
    problems: list[str] = []
    total = LedgerPosting.select(peewee.fn.COALESCE(peewee.fn.SUM(LedgerPosting.amount), 0)).scalar()
    if int(total) != 0:
        problems.append(f"postings sum to {total}, not 0")
    unbalanced = (
        LedgerPosting.select(LedgerPosting.entry, peewee.fn.SUM(LedgerPosting.amount).alias("total"))
        .group_by(LedgerPosting.entry)
        .having(peewee.fn.SUM(LedgerPosting.amount) != 0)
    )
    problems.extend(f"entry {r.entry_id} sums to {r.total}" for r in unbalanced)
    empty = LedgerEntry.select(LedgerEntry.id).where(
        ~peewee.fn.EXISTS(LedgerPosting.select(LedgerPosting.id).where(LedgerPosting.entry == LedgerEntry.id))
    )
    problems.extend(f"entry {r.id} has no postings" for r in empty)
    sums = {
        r.account_id: int(r.total)
        for r in LedgerPosting.select(
            LedgerPosting.account, peewee.fn.SUM(LedgerPosting.amount).alias("total")
        ).group_by(LedgerPosting.account)
    }
    for account in LedgerAccount.select():
        expected = sums.pop(account.id, 0)
        if account.balance != expected:
            problems.append(f"{account.id}: balance {account.balance} but postings sum to {expected}")
        if account.balance < 0 and not account.allow_negative:
            problems.append(f"{account.id}: negative balance {account.balance}")
    problems.extend(f"postings on unknown account {a}" for a in sums)
    return problems
