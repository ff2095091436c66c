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

Modules: `accounts` (account ids, amounts), `posting` (balanced entries, `post_many`),
`movements` (the named movements), `reads` (balances, the journal, deposits over the API),
`consistency` (the invariants). Statements live in `coordd.store.ledger.queries`.
"""

from coordd.domain.ledger.accounts import (
    AVAILABLE,
    EXTERNAL,
    FEES,
    HELD,
    MAX_AMOUNT,
    PLATFORM_EXTERNAL,
    PLATFORM_FEES,
    Balance,
    InsufficientFunds,
    available_account,
    check_amount,
    check_amount_into,
    describe_account,
    fee_for,
    held_account,
)
from coordd.domain.ledger.consistency import check_consistency
from coordd.domain.ledger.movements import (
    deposit,
    deposit_entry,
    hold,
    hold_entry,
    refund,
    refund_entry,
    release,
    release_entry,
    transfer,
    transfer_entry,
)
from coordd.domain.ledger.posting import Entry, post, post_many
from coordd.domain.ledger.reads import EntryView, balance, deposit_funds, get_balance, list_entries

__all__ = [
    "AVAILABLE",
    "EXTERNAL",
    "FEES",
    "HELD",
    "MAX_AMOUNT",
    "PLATFORM_EXTERNAL",
    "PLATFORM_FEES",
    "Balance",
    "Entry",
    "EntryView",
    "InsufficientFunds",
    "available_account",
    "balance",
    "check_amount",
    "check_amount_into",
    "check_consistency",
    "deposit",
    "deposit_entry",
    "deposit_funds",
    "describe_account",
    "fee_for",
    "get_balance",
    "held_account",
    "hold",
    "hold_entry",
    "list_entries",
    "post",
    "post_many",
    "refund",
    "refund_entry",
    "release",
    "release_entry",
    "transfer",
    "transfer_entry",
]
