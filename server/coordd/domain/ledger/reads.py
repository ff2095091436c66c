"""The API's ledger operations: balances, the journal as one owner sees it, admin deposits."""

from __future__ import annotations

from dataclasses import dataclass

from coordd.core.errors import NotFound, Violations
from coordd.core.paging import Page, PageRequest, decode_token, encode_token
from coordd.core.principal import Principal
from coordd.domain.ledger.accounts import (
    AVAILABLE,
    HELD,
    Balance,
    available_account,
    check_amount_into,
    held_account,
)
from coordd.domain.ledger.movements import deposit
from coordd.runtime import Runtime
from coordd.store.ledger import queries
from coordd.store.ledger.models import LedgerEntry, LedgerPosting


def balance(user_id: str) -> Balance:
    rows = queries.balances_by_kind([available_account(user_id), held_account(user_id)])
    return Balance(user_id, rows.get(AVAILABLE, 0), rows.get(HELD, 0))


def _resolve_owner(who: Principal, owner: str) -> str:
    """Users see their own ledger; admins anyone's."""
    target = owner or who.user_id
    if target != who.user_id and not who.is_admin:
        # Someone else's ledger is reported as missing: existence is not leaked.
        raise NotFound(f"users/{target} not found", metadata={"resource": f"users/{target}"})
    if target != who.user_id and not queries.user_exists(target):
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
    before = int(decode_token(page.token, filters)) if page.token else None
    ids = queries.entry_ids_page(accounts, before, page.size + 1)
    more = len(ids) > page.size
    ids = ids[: page.size]
    entries = queries.entries_by_id(ids)
    postings: dict[int, list[LedgerPosting]] = {i: [] for i in ids}
    for p in queries.postings_on(ids, accounts):
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
    if not queries.user_exists(user_id):
        raise NotFound(f"users/{user_id} not found", metadata={"resource": f"users/{user_id}"})
    with rt.store.write() as tx:
        entry = deposit(tx, user_id, amount, reference or f"deposits/{user_id}", memo)
    postings = queries.entry_postings(entry.id, available_account(user_id))
    return EntryView(entry, postings), balance(user_id)
