"""The authorization matrix, generated from the service descriptors: every RPC x anonymous,
every role, a node key and a scoped API key. A new RPC is covered the moment it is added, and
one without an access rule fails.

Requests are empty, so allowed callers mostly get INVALID_ARGUMENT or NOT_FOUND: what matters
is who is turned away by the access rule, and that nobody ever gets UNKNOWN or INTERNAL.
"""

from __future__ import annotations

import grpc
import pytest

from coordd.core.principal import ADMIN, ALL_ROLES
from coordd_client.v1 import auth_pb2, node_pb2, node_pb2_grpc
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


def _invoke(server, rpc: Rpc, metadata: tuple[tuple[str, str], ...], refused: bool) -> Outcome:
    """A stream that passes the access rule may wait for changes, so it gets a short deadline;
    everything else a long one, so a loaded machine cannot turn a refusal into DEADLINE_EXCEEDED."""
    short = rpc.server_streaming and not refused
    return invoke(server.channel, rpc, metadata=metadata, timeout=0.3 if short else 30.0)


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


def test_node_agent_rpcs_are_exactly_the_heartbeats():
    agent = {rpc.full_name for rpc in RPCS if rpc.policy.node_agent}
    assert agent == {
        "coordd.v1.NodeService.Heartbeat",
        "coordd.v1.NodeService.StreamHeartbeats",
    }, "a node key's reach is widened (or narrowed) here on purpose"


# Extra callers: credentials whose scope, not their roles, decides.
NODE_KEY = "node key"
SCOPED_KEY = "scoped admin key"
# An admin's key (so roles never refuse) scoped to one service and one method.
SCOPES = ("coordd.v1.JobService", "coordd.v1.AuthService.WhoAmI")


def _scope_expected(rpc: Rpc, caller: str) -> str:
    if caller == NODE_KEY:
        return "allowed" if rpc.policy.node_agent else "scope"
    return "allowed" if rpc.service in SCOPES or rpc.full_name in SCOPES else "scope"


def _check_scoped(rpc: Rpc, caller: str, outcome: Outcome) -> str:
    if outcome.code in NEVER:
        return f"{rpc.full_name} with a {caller}: {outcome}"
    denied = outcome.code == grpc.StatusCode.PERMISSION_DENIED and outcome.reason == "CREDENTIAL_SCOPE"
    expected = _scope_expected(rpc, caller)
    if expected == "scope" and not denied:
        return f"{rpc.full_name} with a {caller} should be PERMISSION_DENIED(CREDENTIAL_SCOPE), got {outcome}"
    if expected == "allowed" and (
        denied
        or outcome.code == grpc.StatusCode.UNAUTHENTICATED
        or (outcome.code == grpc.StatusCode.PERMISSION_DENIED and outcome.reason == "ROLE_REQUIRED")
    ):
        return f"{rpc.full_name} with a {caller} should pass the access rule, got {outcome}"
    return ""


def _scoped_callers(server) -> dict[str, tuple[tuple[str, str], ...]]:  # type: ignore[no-untyped-def]
    _, operator = server.make_user("node_operator")
    nodes = node_pb2_grpc.NodeServiceStub(server.channel)
    project = nodes.CreateProject(
        node_pb2.CreateProjectRequest(display_name="matrix", slug="matrix"), metadata=bearer(operator)
    ).project
    node_key = nodes.RegisterNode(
        node_pb2.RegisterNodeRequest(project=project.name, display_name="n"), metadata=bearer(operator)
    ).api_key_secret
    _, admin = server.make_user(ADMIN)
    scoped = server.auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(display_name="scoped", scopes=list(SCOPES)), metadata=bearer(admin)
    ).secret
    return {NODE_KEY: bearer(node_key), SCOPED_KEY: bearer(scoped)}


@pytest.mark.timeout(300)
def test_a_node_key_and_a_scoped_key_reach_exactly_their_scope(server):
    problems = []
    for caller, metadata in _scoped_callers(server).items():
        for rpc in RPCS:
            outcome = _invoke(server, rpc, metadata, _scope_expected(rpc, caller) != "allowed")
            problem = _check_scoped(rpc, caller, outcome)
            if problem:
                problems.append(problem)
    assert problems == [], "\n".join(problems)


@pytest.mark.timeout(300)
def test_every_rpc_admits_exactly_the_roles_its_rule_names(server):
    callers: dict[str | None, tuple[tuple[str, str], ...]] = {None: ()}
    for role in ALL_ROLES:
        _, token = server.make_user(role)
        callers[role] = bearer(token)
    problems = []
    for rpc in RPCS:
        for role, metadata in callers.items():
            outcome = _invoke(server, rpc, metadata, _expected(rpc, role) != "allowed")
            problem = _check(rpc, role, outcome)
            if problem:
                problems.append(problem)
    assert problems == [], "\n".join(problems)
