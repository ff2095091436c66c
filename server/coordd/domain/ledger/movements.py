"""The named movements: deposit, hold, refund, release (payment minus fee), transfer. Each
as an `Entry` builder (`*_entry`, for `post_many` batches) and as a one-entry posting."""

from __future__ import annotations

from coordd.core.errors import InvalidArgument
from coordd.domain.ledger.accounts import (
    PLATFORM_EXTERNAL,
    PLATFORM_FEES,
    available_account,
    check_amount,
    held_account,
)
from coordd.domain.ledger.posting import Entry, post_many
from coordd.store.db import Tx
from coordd.store.ledger.models import LedgerEntry


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
