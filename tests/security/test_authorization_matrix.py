"""The authorization matrix, generated from the service descriptors: every RPC x anonymous and
every role. A new RPC is covered the moment it is added, and one without an access rule fails.

Requests are empty, so allowed callers mostly get INVALID_ARGUMENT or NOT_FOUND: what matters
is who is turned away by the access rule, and that nobody ever gets UNKNOWN or INTERNAL.
"""

from __future__ import annotations

import grpc
import pytest

from coordd.core.principal import ADMIN, ALL_ROLES
from tests.support.rpcs import Outcome, Rpc, all_rpcs, invoke
from tests.support.server import bearer

RPCS = all_rpcs()
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


def test_every_rpc_declares_an_access_rule():
    missing = [rpc.full_name for rpc in RPCS if not rpc.declares_policy]
    assert missing == [], f"RPCs without option (coordd.v1.policy): {missing}"


def test_public_rpcs_are_exactly_the_ones_meant_to_be():
    public = {rpc.full_name for rpc in RPCS if rpc.policy.public}
    assert public == {
        "coordd.v1.AuthService.SignUp",
        "coordd.v1.AuthService.Login",
        # Sign-In with Ethereum: a nonce, then the signed message (a login, like Login).
        "coordd.v1.AuthService.CreateSiweNonce",
        "coordd.v1.AuthService.SignInWithEthereum",
        "coordd.v1.CeremonyService.GetCoordinatorKey",
        "coordd.v1.CeremonyService.GetTranscript",
        "coordd.v1.JobService.GetSigningKey",
    }, "a public RPC is added (or removed) here on purpose"


def _expected(rpc: Rpc, role: str | None) -> str:
    if rpc.policy.public:
        return "allowed"
    if role is None:
        return "unauthenticated"
    if role == ADMIN or not rpc.roles or role in rpc.roles:
        return "allowed"
    return "denied"


def _check(rpc: Rpc, role: str | None, outcome: Outcome) -> str:
    """Returns a problem, or ""."""
    if outcome.code in NEVER:
        return f"{rpc.full_name} as {role or 'anonymous'}: {outcome}"
    expected = _expected(rpc, role)
    if expected == "unauthenticated" and outcome.code != grpc.StatusCode.UNAUTHENTICATED:
        return f"{rpc.full_name} anonymous should be UNAUTHENTICATED, got {outcome}"
    if expected == "denied" and (
        outcome.code != grpc.StatusCode.PERMISSION_DENIED or outcome.reason != "ROLE_REQUIRED"
    ):
        return f"{rpc.full_name} as {role} should be PERMISSION_DENIED(ROLE_REQUIRED), got {outcome}"
    if expected == "allowed" and (
        outcome.code == grpc.StatusCode.UNAUTHENTICATED
        or (outcome.code == grpc.StatusCode.PERMISSION_DENIED and outcome.reason == "ROLE_REQUIRED")
    ):
        return f"{rpc.full_name} as {role or 'anonymous'} should pass the access rule, got {outcome}"
    return ""


@pytest.mark.timeout(300)
def test_every_rpc_admits_exactly_the_roles_its_rule_names(server):
    callers: dict[str | None, tuple[tuple[str, str], ...]] = {None: ()}
    for role in ALL_ROLES:
        _, token = server.make_user(role)
        callers[role] = bearer(token)
    problems = []
    for rpc in RPCS:
        timeout = 0.3 if rpc.server_streaming else 2.0
        for role, metadata in callers.items():
            problem = _check(rpc, role, invoke(server.channel, rpc, metadata=metadata, timeout=timeout))
            if problem:
                problems.append(problem)
    assert problems == [], "\n".join(problems)
