"""The ledger's invariants, checked against the tables (tests and operators call it)."""

from __future__ import annotations

from coordd.store.ledger import queries


def check_consistency() -> list[str]:
    """Every invariant of the ledger, as a list of problems (empty when consistent):

    the sum of all postings is zero; every entry balances; every account's cached balance
    equals the sum of its postings; no account that may not go negative is negative.
    """
    problems: list[str] = []
    total = queries.postings_total()
    if total != 0:
        problems.append(f"postings sum to {total}, not 0")
    problems.extend(f"entry {r.entry_id} sums to {r.total}" for r in queries.unbalanced_entries())
    problems.extend(f"entry {entry_id} has no postings" for entry_id in queries.entries_without_postings())
    sums = queries.posting_sums_by_account()
    for account in queries.all_accounts():
        expected = sums.pop(account.id, 0)
        if account.balance != expected:
            problems.append(f"{account.id}: balance {account.balance} but postings sum to {expected}")
        if account.balance < 0 and not account.allow_negative:
            problems.append(f"{account.id}: negative balance {account.balance}")
    problems.extend(f"postings on unknown account {a}" for a in sums)
    return problems
