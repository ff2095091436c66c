"""Sign-In with Ethereum as a login method besides email and password.

1. `create_nonce`: the daemon issues a nonce (random, usable once, expiring). At most
   `siwe_max_nonces` are outstanding at once (expired ones are dropped first): past that,
   RESOURCE_EXHAUSTED until the oldest expires, so unused nonces never grow without bound.
2. `sign_in`: the wallet's signed EIP-4361 message comes back. It is accepted when it names
   this daemon's domain and URI, a nonce the daemon issued and nobody used, is within its
   validity window, and its EIP-191 signature recovers to the address it names (checked
   offline). The first sign-in of an address creates its user; every one returns a session.
   `sign_in` is `check_signed` (offline: no database read) then `complete_sign_in` (the
   nonce and the user); the API puts the per-address throttle between the two, so only a
   message the address's own key signed is counted against that address.

A user signed in with Ethereum is `{address}@ethereum` (lower case): not an address that
SignUp or Login accept, so nobody can claim it with a password.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta

from coordd.core.errors import AlreadyExists, InvalidArgument, ResourceExhausted, Unauthenticated
from coordd.core.principal import PARTICIPANT
from coordd.domain.auth.audit import FAILED, LOGIN, OK, record
from coordd.domain.auth.login import Session, issue_session
from coordd.domain.auth.siwe_message import SiweError, SiweMessage, recover_address
from coordd.runtime import Runtime
from coordd.store.auth import queries, siwe
from coordd.store.auth.models import User

IDENTITY_DOMAIN = "ethereum"
# Clocks differ: an Issued At this far in the future is still accepted.
CLOCK_SKEW = timedelta(minutes=5)
NONCE_CHARS = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Nonce:
    nonce: str
    expire_time: datetime
    domain: str
    uri: str


def identity(address: str) -> str:
    """The user email an Ethereum address signs in as."""
    return f"{address.lower()}@{IDENTITY_DOMAIN}"


def address_of_user(user: User) -> str:
    """The address of a user who signed in with Ethereum; "" for others."""
    local, _, domain = user.email.partition("@")
    return local if domain == IDENTITY_DOMAIN else ""


def create_nonce(rt: Runtime) -> Nonce:
    nonce = "".join(secrets.choice(NONCE_CHARS) for _ in range(24))
    cap = rt.settings.siwe_max_nonces
    full_until: datetime | None = None
    with rt.store.write() as tx:
        expire = tx.now + timedelta(seconds=rt.settings.siwe_nonce_ttl_s)
        siwe.drop_expired_nonces(tx.now)
        if cap and siwe.count_nonces(cap) >= cap:
            full_until = siwe.first_expiry() or expire
            wait = (full_until - tx.now).total_seconds()
        else:
            siwe.insert_nonce(nonce, expire)
    if full_until is not None:
        # Raised after the commit: the expired nonces dropped above stay dropped.
        seconds = max(int(wait + 0.999), 1)
        raise ResourceExhausted(
            f"too many Sign-In with Ethereum nonces are outstanding ({cap}); retry in {seconds} s",
            reason="SIWE_NONCES_EXHAUSTED",
            metadata={"limit": str(cap), "retry_after_s": str(seconds)},
            retry_after_s=float(seconds),
        )
    return Nonce(nonce, expire, rt.settings.siwe_domain, rt.settings.siwe_uri)


def _refuse(reason: str, why: str) -> Unauthenticated:
    return Unauthenticated(f"Sign-In with Ethereum refused: {why}", reason=reason)


def _check(rt: Runtime, text: str, signature: bytes) -> SiweMessage:
    try:
        message = SiweMessage.parse(text)
    except SiweError as exc:
        raise InvalidArgument(f"not a valid EIP-4361 message: {exc}", reason="BAD_SIWE_MESSAGE") from None
    now = rt.now()
    if message.domain != rt.settings.siwe_domain:
        raise _refuse(
            "SIWE_WRONG_DOMAIN", f"the message is for {message.domain!r}, not {rt.settings.siwe_domain!r}"
        )
    if message.uri != rt.settings.siwe_uri:
        raise _refuse("SIWE_WRONG_URI", f"the message's URI is not {rt.settings.siwe_uri!r}")
    if message.expiration_time is not None and message.expiration_time <= now:
        raise _refuse("SIWE_EXPIRED", "the message has expired")
    if message.not_before is not None and message.not_before > now + CLOCK_SKEW:
        raise _refuse("SIWE_NOT_YET_VALID", "the message is not valid yet (Not Before)")
    if message.issued_at > now + CLOCK_SKEW:
        raise _refuse("SIWE_NOT_YET_VALID", "the message was issued in the future")
    try:
        signer = recover_address(text, signature)
    except SiweError as exc:
        raise _refuse("SIWE_BAD_SIGNATURE", str(exc)) from None
    if signer != message.address:
        raise _refuse("SIWE_BAD_SIGNATURE", "the signature is not by the address the message names")
    return message


def _user_for(rt: Runtime, message: SiweMessage) -> User:
    """Consumes the nonce and finds (or, on first sign-in, creates) the address's user."""
    email = identity(message.address)
    with rt.store.write() as tx:
        if not siwe.take_nonce(message.nonce, tx.now):
            raise _refuse("SIWE_BAD_NONCE", "the nonce was not issued here, was used, or expired")
        user = queries.user_by_email(email)
        if user is None:
            try:
                # "!" is no password hash: this user can never log in with a password.
                user = queries.insert_user(email, message.address, "!", PARTICIPANT, tx.now)
            except queries.EmailTaken:
                raise AlreadyExists(
                    "this address signed in at the same moment; retry", reason="RACE"
                ) from None
            tx.emit("auth.user.created", f"users/{user.id}", {"roles": [PARTICIPANT], "via": "siwe"})
    return user


def _audit_refusal(rt: Runtime, peer: str, reason: str) -> None:
    record(
        rt,
        LOGIN,
        actor="",
        credential="siwe",
        target="",
        peer=peer,
        outcome=FAILED,
        detail={"reason": reason},
    )


def check_signed(rt: Runtime, text: str, signature: bytes, peer: str = "") -> SiweMessage:
    """The message, when it is for this daemon, in its validity window and signed by the
    address it names (offline: no nonce is consumed). Blocking on a refusal (the audit row)."""
    try:
        return _check(rt, text, signature)
    except Unauthenticated as exc:
        _audit_refusal(rt, peer, exc.reason)
        raise


def sign_in(rt: Runtime, text: str, signature: bytes, peer: str = "") -> tuple[Session, str]:
    """Blocking (database): call through rt.run. The session and the signer's address."""
    return complete_sign_in(rt, check_signed(rt, text, signature, peer), peer)


def complete_sign_in(rt: Runtime, message: SiweMessage, peer: str = "") -> tuple[Session, str]:
    """A checked message's nonce is consumed and its user found or created. Blocking."""
    try:
        user = _user_for(rt, message)
    except Unauthenticated as exc:
        _audit_refusal(rt, peer, exc.reason)
        raise
    if user.disabled:
        raise Unauthenticated("this account is disabled", reason="BAD_CREDENTIALS")
    record(
        rt,
        LOGIN,
        actor=f"users/{user.id}",
        credential="siwe",
        target=f"users/{user.id}",
        peer=peer,
        outcome=OK,
        detail={"address": message.address, "chain_id": message.chain_id},
    )
    return issue_session(rt, user), message.address
