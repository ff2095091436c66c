"""Access tokens are standard HS256 JWTs, and only HS256 JWTs signed with our secret pass."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from coordd.crypto.tokens import AccessTokens, TokenError

SECRET = b"s" * 32
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_issued_tokens_are_standard_jwts():
    token, expire = AccessTokens(SECRET, 3600).issue("u1", ["participant"], NOW)
    claims = jwt.decode(
        token,
        SECRET,
        algorithms=["HS256"],
        issuer="coordd",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["sub"] == "u1" and claims["roles"] == ["participant"]
    assert expire == NOW + timedelta(hours=1)


def test_a_standard_library_token_verifies():
    token = jwt.encode(
        {"iss": "coordd", "sub": "u2", "exp": int((NOW + timedelta(minutes=5)).timestamp())},
        SECRET,
        algorithm="HS256",
    )
    claims = AccessTokens(SECRET, 60).verify(token, NOW)
    assert claims.user_id == "u2" and claims.roles == ()


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "not.a.jwt",
        jwt.encode({"iss": "coordd", "sub": "u", "exp": 4102444800}, b"x" * 32, algorithm="HS256"),
        jwt.encode({"iss": "coordd", "sub": "u", "exp": 4102444800}, SECRET, algorithm="HS512"),
        jwt.encode({"iss": "other", "sub": "u", "exp": 4102444800}, SECRET, algorithm="HS256"),
        jwt.encode({"iss": "coordd", "exp": 4102444800}, SECRET, algorithm="HS256"),
        f"{_b64({'alg': 'none'})}.{_b64({'iss': 'coordd', 'sub': 'u', 'exp': 4102444800})}.",
    ],
)
def test_forged_or_foreign_tokens_are_rejected(token):
    with pytest.raises(TokenError, match="not valid"):
        AccessTokens(SECRET, 60).verify(token, NOW)


def test_a_tampered_payload_is_rejected():
    token, _ = AccessTokens(SECRET, 3600).issue("u1", ["participant"], NOW)
    header, _, signature = token.split(".")
    forged = _b64({"iss": "coordd", "sub": "u1", "roles": ["admin"], "exp": 4102444800})
    with pytest.raises(TokenError):
        AccessTokens(SECRET, 60).verify(f"{header}.{forged}.{signature}", NOW)


def test_an_expired_token_says_so():
    token, _ = AccessTokens(SECRET, 60).issue("u1", [], NOW)
    with pytest.raises(TokenError, match="expired"):
        AccessTokens(SECRET, 60).verify(token, NOW + timedelta(seconds=61))


def test_tokens_carry_an_id_and_the_revocation_epoch():
    tokens = AccessTokens(SECRET, 3600)
    first, _ = tokens.issue("u1", [], NOW)
    second, _ = tokens.issue("u1", [], NOW, epoch=3)
    one = tokens.verify(first, NOW)
    two = tokens.verify(second, NOW)
    assert one.token_id and two.token_id and one.token_id != two.token_id
    assert (one.epoch, two.epoch) == (0, 3)
    claims = jwt.decode(
        second, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False}
    )
    assert claims["jti"] == two.token_id and claims["ep"] == 3


def test_a_malformed_epoch_is_rejected():
    token = jwt.encode({"iss": "coordd", "sub": "u", "exp": 4102444800, "ep": "9"}, SECRET, algorithm="HS256")
    with pytest.raises(TokenError, match="not valid"):
        AccessTokens(SECRET, 60).verify(token, NOW)
