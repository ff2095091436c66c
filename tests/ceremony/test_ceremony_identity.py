"""Identity and eligibility: Sign-In with Ethereum (EIP-4361 messages, a nonce issued by the
daemon, the signature verified offline) besides email and password, and per-ceremony rules
(allow list, minimum account age, Ethereum required; one participant per identity), each
refused with a clear reason."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import grpc
import pytest

from coordd.domain.auth.siwe_message import SiweError, SiweMessage, recover_address
from coordd_client.siwe import address_of, compose, sign
from coordd_client.v1 import auth_pb2, auth_pb2_grpc
from coordd_client.v1 import ceremony_pb2 as pb
from tests.ceremony.e2e_ceremony.helpers import Ceremonies, dur
from tests.helpers import rpc_error
from tests.support.server import bearer

# The account of web3.js's documentation: a known key and its EIP-55 address.
KNOWN_KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
KNOWN_ADDRESS = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def siwe_login(server, key: bytes, **overrides) -> auth_pb2.SignInWithEthereumResponse:
    stub = auth_pb2_grpc.AuthServiceStub(server.channel)
    nonce = stub.CreateSiweNonce(auth_pb2.CreateSiweNonceRequest())
    fields = {"domain": nonce.domain, "uri": nonce.uri, "nonce": nonce.nonce, "issued_at": _now()}
    signer = overrides.pop("signer", key)
    fields.update(overrides)
    message = compose(fields.pop("domain"), address_of(key), fields.pop("uri"), fields.pop("nonce"), **fields)
    return stub.SignInWithEthereum(
        auth_pb2.SignInWithEthereumRequest(message=message, signature=sign(message, signer))
    )


def test_keccak_checksum_and_recovery_match_a_known_ethereum_account():
    assert address_of(KNOWN_KEY) == KNOWN_ADDRESS
    message = compose("example.org", KNOWN_ADDRESS, "https://example.org", "abcdefgh12", _now())
    assert recover_address(message, sign(message, KNOWN_KEY)) == KNOWN_ADDRESS
    parsed = SiweMessage.parse(
        compose(
            "example.org",
            KNOWN_ADDRESS,
            "https://example.org",
            "abcdefgh12",
            "2026-01-01T00:00:00Z",
            statement="Contribute to the ceremony",
        )
    )
    assert parsed.statement == "Contribute to the ceremony" and parsed.chain_id == 1
    with pytest.raises(SiweError, match="checksummed"):
        SiweMessage.parse(message.replace(KNOWN_ADDRESS, KNOWN_ADDRESS.lower()))


def test_sign_in_with_ethereum_creates_the_user_once_and_nonces_work_once(server):
    key = os.urandom(32)
    first = siwe_login(server, key)
    assert first.address == address_of(key) and first.access_token
    who = auth_pb2_grpc.AuthServiceStub(server.channel).WhoAmI(
        auth_pb2.WhoAmIRequest(), metadata=bearer(first.access_token)
    )
    assert who.user.name == first.user.name
    again = siwe_login(server, key)
    assert again.user.name == first.user.name, "one user per address"
    stub = auth_pb2_grpc.AuthServiceStub(server.channel)
    nonce = stub.CreateSiweNonce(auth_pb2.CreateSiweNonceRequest())
    message = compose(nonce.domain, address_of(key), nonce.uri, nonce.nonce, _now())
    request = auth_pb2.SignInWithEthereumRequest(message=message, signature=sign(message, key))
    stub.SignInWithEthereum(request)
    replay = rpc_error(grpc.StatusCode.UNAUTHENTICATED, stub.SignInWithEthereum, request)
    assert replay.reason == "SIWE_BAD_NONCE"
    # The identity cannot be claimed or entered with a password.
    email = f"{address_of(key).lower()}@ethereum"
    rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.SignUp,
        auth_pb2.SignUpRequest(email=email, password="a long enough password"),
    )
    rpc_error(grpc.StatusCode.INVALID_ARGUMENT, stub.Login, auth_pb2.LoginRequest(email=email, password="!"))


@pytest.mark.parametrize(
    ("overrides", "code", "reason"),
    [
        ({"domain": "phishing.example"}, grpc.StatusCode.UNAUTHENTICATED, "SIWE_WRONG_DOMAIN"),
        ({"uri": "https://phishing.example"}, grpc.StatusCode.UNAUTHENTICATED, "SIWE_WRONG_URI"),
        ({"signer": b"\x01" * 32}, grpc.StatusCode.UNAUTHENTICATED, "SIWE_BAD_SIGNATURE"),
        ({"nonce": "notissuedhere"}, grpc.StatusCode.UNAUTHENTICATED, "SIWE_BAD_NONCE"),
        ({"expiration_time": "2020-01-01T00:00:00Z"}, grpc.StatusCode.UNAUTHENTICATED, "SIWE_EXPIRED"),
        ({"issued_at": "2999-01-01T00:00:00Z"}, grpc.StatusCode.UNAUTHENTICATED, "SIWE_NOT_YET_VALID"),
        ({"nonce": "short"}, grpc.StatusCode.INVALID_ARGUMENT, "BAD_SIWE_MESSAGE"),
    ],
)
def test_sign_in_with_ethereum_refusals_say_why(server, overrides, code, reason):
    failure = rpc_error(code, siwe_login, server, os.urandom(32), **overrides)
    assert failure.reason == reason


def test_malformed_messages_and_signatures_are_invalid_argument_or_refused(server):
    stub = auth_pb2_grpc.AuthServiceStub(server.channel)
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.SignInWithEthereum,
        auth_pb2.SignInWithEthereumRequest(message="hello", signature=b"\x00" * 65),
    )
    assert failure.reason == "BAD_SIWE_MESSAGE"
    nonce = stub.CreateSiweNonce(auth_pb2.CreateSiweNonceRequest())
    message = compose(nonce.domain, KNOWN_ADDRESS, nonce.uri, nonce.nonce, _now())
    failure = rpc_error(
        grpc.StatusCode.UNAUTHENTICATED,
        stub.SignInWithEthereum,
        auth_pb2.SignInWithEthereumRequest(message=message, signature=b"\x07" * 12),
    )
    assert failure.reason == "SIWE_BAD_SIGNATURE"


def _eligible(cer, server, **rules) -> pb.Ceremony:
    ceremony = cer.create(start_in=3600)
    cer.stub.UpdateCeremony(
        pb.UpdateCeremonyRequest(
            ceremony=pb.Ceremony(name=ceremony.name, eligibility=pb.Eligibility(**rules)),
            update_mask={"paths": ["eligibility"]},
        ),
        metadata=bearer(cer.coordinator),
    )
    return cer.get(ceremony.name)


def test_a_ceremony_may_take_ethereum_identities_only(server):
    cer = Ceremonies(server)
    ceremony = _eligible(cer, server, require_ethereum=True)
    assert ceremony.eligibility.require_ethereum
    _, password_user = server.make_user("participant")
    failure = rpc_error(grpc.StatusCode.PERMISSION_DENIED, cer.join, ceremony, password_user)
    assert failure.reason == "NOT_ELIGIBLE" and failure.metadata["rule"] == "require_ethereum"
    token = siwe_login(server, os.urandom(32)).access_token
    assert cer.join(ceremony, token).status == pb.PARTICIPANT_STATUS_CREATED
    again = rpc_error(grpc.StatusCode.ALREADY_EXISTS, cer.join, ceremony, token)
    assert again.reason == "ALREADY_JOINED", "one identity, one participant"


def test_an_allow_list_of_addresses_and_emails(server):
    cer = Ceremonies(server)
    allowed_key, other_key = os.urandom(32), os.urandom(32)
    ceremony = _eligible(cer, server, allowed_identities=[address_of(allowed_key), "Ada@Example.com"])
    failure = rpc_error(
        grpc.StatusCode.PERMISSION_DENIED, cer.join, ceremony, siwe_login(server, other_key).access_token
    )
    assert failure.metadata["rule"] == "allowed_identities"
    assert cer.join(ceremony, siwe_login(server, allowed_key).access_token)
    ada = server.sign_up(email="ada@example.com")
    assert cer.join(ceremony, ada.access_token)


def test_a_minimum_account_age_refuses_new_accounts_until_they_are_old_enough(server, clock):
    cer = Ceremonies(server)
    ceremony = _eligible(cer, server, min_account_age=dur(7 * 86400))
    token = siwe_login(server, os.urandom(32)).access_token
    failure = rpc_error(grpc.StatusCode.PERMISSION_DENIED, cer.join, ceremony, token)
    assert failure.metadata["rule"] == "min_account_age" and "at least" in failure.details
    clock.advance(7 * 86400 + 60)
    assert cer.join(ceremony, token).status == pb.PARTICIPANT_STATUS_CREATED


def test_bad_eligibility_rules_are_invalid_argument(server):
    cer = Ceremonies(server)
    ceremony = cer.create(start_in=3600)
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        cer.stub.UpdateCeremony,
        pb.UpdateCeremonyRequest(
            ceremony=pb.Ceremony(
                name=ceremony.name, eligibility=pb.Eligibility(allowed_identities=["not an identity"])
            ),
            update_mask={"paths": ["eligibility"]},
        ),
        metadata=bearer(cer.coordinator),
    )
    assert "eligibility.allowed_identities[0]" in failure.violations
