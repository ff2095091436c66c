"""Accounts and amounts: account ids, which may go negative, and how amounts are checked."""

from __future__ import annotations

from dataclasses import dataclass

from coordd.core.errors import FailedPrecondition, InvalidArgument, Violations

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


def describe_account(account_id: str) -> tuple[str, str, bool]:
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


def check_amount_into(v: Violations, amount: int, field: str = "amount", allow_zero: bool = False) -> None:
    """Like check_amount, adding to a request's other violations instead of raising."""
    try:
        check_amount(amount, field, allow_zero)
    except InvalidArgument as exc:
        v.items.extend(exc.violations)


def fee_for(amount: int, fee_bps: int) -> int:
    """Platform fee in basis points, rounded down: integer arithmetic only."""
    return amount * fee_bps // 10_000
