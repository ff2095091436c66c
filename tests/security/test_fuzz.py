"""Property-based fuzzing of every RPC, generated from the descriptors, on both backends.

For any request hypothesis can build (hostile strings, extreme numbers, unknown enums,
out-of-range times, deep messages), from an admin (who gets furthest into the rules) and from a
participant: the answer is a canonical status other than UNKNOWN and INTERNAL, health stays
SERVING, and the ledger still balances. `COORDD_TEST_FUZZ_EXAMPLES` raises the examples per RPC;
`COORDD_TEST_FUZZ_REPORT=path` writes the codes each RPC got as JSON (docs/SECURITY.md).
"""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.competition.support import create as create_competition
from tests.support import fuzz
from tests.support.fuzz import request_strategy
from tests.support.rpcs import all_rpcs, by_service, invoke
from tests.support.server import bearer

EXAMPLES = int(os.environ.get("COORDD_TEST_FUZZ_EXAMPLES", "12"))
SERVICES = dict(by_service(all_rpcs()))
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
_report: dict[str, dict[str, collections.Counter[str]]] = collections.defaultdict(
    lambda: collections.defaultdict(collections.Counter)
)


@pytest.fixture(scope="module", autouse=True)
def _write_report():
    yield
    path = os.environ.get("COORDD_TEST_FUZZ_REPORT")
    if path:
        merged = {
            rpc: {backend: dict(codes) for backend, codes in by_backend.items()}
            for rpc, by_backend in sorted(_report.items())
        }
        Path(path).write_text(json.dumps(merged, indent=1, sort_keys=True))


def _seed(server, admin: str, user_id: str, token: str) -> list[str]:
    """One resource of each kind, owned by the fuzzing participant where it can be."""
    from coordd_client.v1 import (
        ceremony_pb2,
        ceremony_pb2_grpc,
        job_pb2,
        job_pb2_grpc,
        node_pb2,
        node_pb2_grpc,
        notification_pb2,
        notification_pb2_grpc,
    )

    names = [f"users/{user_id}"]
    ceremonies = ceremony_pb2_grpc.CeremonyServiceStub(server.channel)
    now = int(time.time())
    ceremony = ceremonies.CreateCeremony(
        ceremony_pb2.CreateCeremonyRequest(
            title="Fuzz",
            prefix="fuzz-ceremony",
            start_time=timestamp_pb2.Timestamp(seconds=now + 3600),
            end_time=timestamp_pb2.Timestamp(seconds=now + 86400),
            timeout=ceremony_pb2.TimeoutConfig(
                policy=ceremony_pb2.TIMEOUT_POLICY_FIXED, fixed_timeout=duration_pb2.Duration(seconds=60)
            ),
            verifier=ceremony_pb2.Verifier(name="none"),
        ),
        metadata=bearer(token),
    ).ceremony
    circuit = ceremonies.AddCircuit(
        ceremony_pb2.AddCircuitRequest(parent=ceremony.name, display_name="main"), metadata=bearer(token)
    ).circuit
    names += [ceremony.name, circuit.name]
    names.append(create_competition(server, token).name)
    jobs = job_pb2_grpc.JobServiceStub(server.channel)
    job = jobs.SubmitJob(
        job_pb2.SubmitJobRequest(
            kind=job_pb2.JOB_KIND_INFERENCE, model_ref="hf://org/model@1", input=job_pb2.Payload(data=b"x")
        ),
        metadata=bearer(token),
    ).job
    names.append(job.name)
    nodes = node_pb2_grpc.NodeServiceStub(server.channel)
    project = nodes.CreateProject(
        node_pb2.CreateProjectRequest(display_name="p", slug="fuzz-project"), metadata=bearer(token)
    ).project
    node = nodes.RegisterNode(
        node_pb2.RegisterNodeRequest(project=project.name, display_name="edge"), metadata=bearer(token)
    ).node
    names += [project.name, node.name]
    channels = notification_pb2_grpc.NotificationServiceStub(server.channel)
    channel = channels.CreateChannel(
        notification_pb2.CreateChannelRequest(display_name="c", url="http://127.0.0.1:9/hook"),
        metadata=bearer(token),
    ).channel
    names.append(channel.name)
    return names


def _ledger_balances(server) -> int:
    """Every posting has a counter-posting: the sum over all accounts is zero."""
    with server.rt.store.read():
        row = server.rt.store.db.execute_sql("SELECT COALESCE(SUM(amount), 0) FROM ledger_posting").fetchone()
    return int(row[0])


@pytest.mark.timeout(600)
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_no_request_gets_unknown_or_internal_and_health_stays_serving(server, backend, service):
    _, admin = server.make_user("admin")
    user_id, participant = server.make_user(
        "participant", "provider", "organizer", "coordinator", "node_operator"
    )
    fuzz.KNOWN_NAMES[:] = _seed(server, admin, user_id, participant)
    health = health_pb2_grpc.HealthStub(server.channel)
    callers = st.sampled_from([bearer(admin), bearer(participant)])
    problems: list[str] = []

    for rpc in SERVICES[service]:
        _fuzz(server, backend, rpc, callers, problems)()
        serving = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert serving == health_pb2.HealthCheckResponse.SERVING, f"health after {rpc.full_name}"
    assert problems == [], "\n".join(problems[:20])
    assert _ledger_balances(server) == 0


def _fuzz(server, backend, rpc, callers, problems):
    messages = request_strategy(rpc.method.input_type)
    requests = st.lists(messages, min_size=1, max_size=3) if rpc.client_streaming else messages

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=requests, metadata=callers)
    def call(request, metadata):
        outcome = invoke(server.channel, rpc, request, metadata, timeout=0.5 if rpc.server_streaming else 5.0)
        _report[rpc.full_name][backend][outcome.code.name] += 1
        # The reply's trailers broke the transport (e.g. an error message echoing a huge value).
        if outcome.code in NEVER or "metadata size exceeds" in outcome.details:
            problems.append(f"{rpc.full_name}: {outcome} for {request!r:.300}")

    return call
