"""Three replicas on one PostgreSQL behind nginx, with Redis and without: what one replica does,
the others see, and calls spread over replicas keep every invariant a single process keeps."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import grpc
import psycopg2
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from coordd_client.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    common_pb2,
    competition_pb2,
    competition_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
)
from tests.cluster.cluster import Cluster, bearer, wait_for

PASSWORD = "cluster password 1"

pytestmark = pytest.mark.e2e


def signup(channel: grpc.Channel, *roles: int) -> tuple[str, str]:
    """A new user through `channel`: (users/ID, access token)."""
    reply = auth_pb2_grpc.AuthServiceStub(channel).SignUp(
        auth_pb2.SignUpRequest(
            email=f"{uuid.uuid4().hex[:12]}@cluster.example", password=PASSWORD, roles=roles
        )
    )
    return reply.user.name, reply.access_token


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def secs(value: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=value))
    return out


def ledger_problems(database_url: str) -> list[str]:
    """The ledger's invariants straight from the tables (domain/ledger/consistency.py's list)."""
    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            problems = []
            cur.execute("SELECT COALESCE(SUM(amount), 0) FROM ledger_posting")
            total = cur.fetchone()[0]
            if total != 0:
                problems.append(f"postings sum to {total}")
            cur.execute(
                "SELECT entry_id, SUM(amount) FROM ledger_posting GROUP BY entry_id HAVING SUM(amount) <> 0"
            )
            problems += [f"entry {e} sums to {s}" for e, s in cur.fetchall()]
            cur.execute(
                "SELECT a.id, a.balance, COALESCE(SUM(p.amount), 0) FROM ledger_account a "
                "LEFT JOIN ledger_posting p ON p.account_id = a.id GROUP BY a.id, a.balance "
                "HAVING a.balance <> COALESCE(SUM(p.amount), 0) OR (a.balance < 0 AND NOT a.allow_negative)"
            )
            problems += [f"{a}: balance {b}, postings {s}" for a, b, s in cur.fetchall()]
            return problems
    finally:
        conn.close()


def account_balance(database_url: str, account: str) -> int:
    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT balance FROM ledger_account WHERE id = %s", (account,))
            row = cur.fetchone()
            return int(row[0]) if row else 0
    finally:
        conn.close()


# First in the module: the platform fee account does not exist yet, so the first payments race
# to create it (issue 13: "insufficient funds in platform/fees" on a fresh database).
def test_workers_spread_over_replicas_never_double_claim_and_every_job_completes_once(cluster: Cluster):
    drain_jobs_through_the_front(cluster)


def drain_jobs_through_the_front(
    cluster: Cluster, jobs_n: int = 120, budget: int = 100, workers: int = 4
) -> None:
    """Submits `jobs_n` paid jobs and drains them with `workers` workers, all through nginx:
    every job claimed once and completed, every replica served claims, the ledger balanced."""
    submitter_name, submitter = signup(cluster.front, common_pb2.ROLE_PARTICIPANT)
    ledger_pb2_grpc.LedgerServiceStub(cluster.front).Deposit(
        ledger_pb2.DepositRequest(owner=submitter_name, amount=jobs_n * budget),
        metadata=bearer(cluster.admin_key),
    )
    providers = [signup(cluster.front, common_pb2.ROLE_PROVIDER) for _ in range(workers)]
    jobs = job_pb2_grpc.JobServiceStub(cluster.front)
    request = job_pb2.SubmitJobRequest(
        kind=job_pb2.JOB_KIND_INFERENCE, model_ref="noop", input=job_pb2.Payload(data=b"{}"), budget=budget
    )
    with ThreadPoolExecutor(8) as pool:
        submitted = list(
            pool.map(
                lambda _: jobs.SubmitJob(request, metadata=bearer(submitter), timeout=30).job.name,
                range(jobs_n),
            )
        )
    assert len(set(submitted)) == jobs_n

    claims: dict[str, int] = {}
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 90
    claim = job_pb2.ClaimJobsRequest(max_jobs=4, wait=secs(1))

    def work(token: str) -> None:
        while time.monotonic() < deadline:
            with lock:
                if sum(claims.values()) >= jobs_n:
                    return
            leased = list(jobs.ClaimJobs(claim, metadata=bearer(token), timeout=30).jobs)
            with lock:
                for item in leased:
                    claims[item.job.name] = claims.get(item.job.name, 0) + 1
            if not leased:
                continue
            reply = jobs.BatchCompleteJobs(
                job_pb2.BatchCompleteJobsRequest(
                    requests=[
                        job_pb2.CompleteJobRequest(lease=x.lease, output=job_pb2.Payload(data=b"ok"))
                        for x in leased
                    ]
                ),
                metadata=bearer(token),
                timeout=30,
            )
            with lock:
                errors.extend(f"{r.error_code}: {r.error_message}" for r in reply.results if r.error_code)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, [token for _, token in providers]))

    assert errors == []
    assert {name: n for name, n in claims.items() if n != 1} == {}, "no job is claimed twice"
    assert set(claims) == set(submitted)
    listed = jobs.ListJobs(job_pb2.ListJobsRequest(page_size=1000), metadata=bearer(submitter)).jobs
    assert {j.name for j in listed if j.state == job_pb2.JOB_STATE_SUCCEEDED} == set(submitted)
    assert ledger_problems(cluster.database_url) == []
    fee = budget * 500 // 10_000
    assert account_balance(cluster.database_url, "platform/fees") == jobs_n * fee
    paid = sum(account_balance(cluster.database_url, f"{name}/available") for name, _ in providers)
    assert paid == jobs_n * (budget - fee)
    # The calls really were spread: every replica claimed and completed some.
    assert all(cluster.rpc_counts("/coordd.v1.JobService/ClaimJobs")), cluster.rpc_counts(
        "/coordd.v1.JobService/ClaimJobs"
    )
    assert all(cluster.rpc_counts("/coordd.v1.JobService/BatchCompleteJobs"))


def test_concurrent_registers_spread_over_replicas_never_oversell(cluster: Cluster):
    capacity, registrants = 15, 45
    _, organizer = signup(cluster.front, common_pb2.ROLE_ORGANIZER)
    comps = competition_pb2_grpc.CompetitionServiceStub(cluster.front)
    now = datetime.now(UTC)
    comp = comps.CreateCompetition(
        competition_pb2.CreateCompetitionRequest(
            competition=competition_pb2.Competition(
                title="Cluster cup",
                capacity=capacity,
                registration_open_time=ts(now - timedelta(minutes=1)),
                registration_close_time=ts(now + timedelta(hours=1)),
                start_time=ts(now + timedelta(days=2)),
                end_time=ts(now + timedelta(days=3)),
            )
        ),
        metadata=bearer(organizer),
    ).competition
    comps.PublishCompetition(
        competition_pb2.PublishCompetitionRequest(name=comp.name), metadata=bearer(organizer)
    )
    with ThreadPoolExecutor(8) as pool:
        tokens = [t for _, t in pool.map(lambda _: signup(cluster.front), range(registrants))]
    before = cluster.rpc_counts("/coordd.v1.CompetitionService/Register")
    barrier = threading.Barrier(registrants)

    def register(token: str) -> int:
        barrier.wait()
        request = competition_pb2.RegisterRequest(competition=comp.name)
        return comps.Register(request, metadata=bearer(token), timeout=30).registration.state

    with ThreadPoolExecutor(registrants) as pool:
        states = list(pool.map(register, tokens))
    confirmed = states.count(competition_pb2.REGISTRATION_STATE_CONFIRMED)
    waitlisted = states.count(competition_pb2.REGISTRATION_STATE_WAITLISTED)
    assert (confirmed, waitlisted) == (capacity, registrants - capacity)
    stored = comps.GetCompetition(
        competition_pb2.GetCompetitionRequest(name=comp.name), metadata=bearer(organizer)
    )
    assert stored.competition.confirmed_count == capacity
    assert stored.competition.waitlisted_count == registrants - capacity
    assert stored.competition.free_seats == 0
    after = cluster.rpc_counts("/coordd.v1.CompetitionService/Register")
    assert all(a > b for a, b in zip(after, before, strict=True)), "every replica took some registrations"


def test_an_idempotency_key_retried_on_another_replica_replays_the_stored_response(cluster: Cluster):
    _, token = signup(cluster.front)
    key = f"key-{uuid.uuid4().hex}"
    request = auth_pb2.CreateApiKeyRequest(display_name="ci key")
    replies = [
        auth_pb2_grpc.AuthServiceStub(cluster.channel(replica.target)).CreateApiKey(
            request, metadata=bearer(token, **{"idempotency-key": key})
        )
        for replica in cluster.replicas
    ]
    assert len({r.api_key.name for r in replies}) == 1
    assert len({r.secret for r in replies}) == 1 and replies[0].secret
    listed = auth_pb2_grpc.AuthServiceStub(cluster.front).ListApiKeys(
        auth_pb2.ListApiKeysRequest(), metadata=bearer(token)
    )
    assert [k.name for k in listed.api_keys] == [replies[0].api_key.name], "executed once"


def test_tokens_and_api_keys_issued_by_one_replica_work_on_every_other(cluster: Cluster):
    first, second, third = (
        auth_pb2_grpc.AuthServiceStub(cluster.channel(r.target)) for r in cluster.replicas
    )
    user, token = signup(cluster.channel(cluster.replicas[0].target))
    for stub in (second, third):
        assert stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(token)).user.name == user
    secret = second.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(display_name="k"), metadata=bearer(token)
    ).secret
    for stub in (first, third):
        assert stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(secret)).user.name == user
    login = third.Login(
        auth_pb2.LoginRequest(
            email=first.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(token)).user.email, password=PASSWORD
        )
    )
    assert first.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(login.access_token)).user.name == user


def test_a_node_beating_on_one_replica_is_never_marked_down_by_the_leader_on_another(cluster: Cluster):
    leader = cluster.leader()
    follower = next(r for r in cluster.replicas if r is not leader)
    _, operator = signup(cluster.front, common_pb2.ROLE_NODE_OPERATOR)
    nodes = node_pb2_grpc.NodeServiceStub(cluster.front)
    project = nodes.CreateProject(
        node_pb2.CreateProjectRequest(
            display_name="Cluster fleet",
            slug=f"p-{uuid.uuid4().hex[:8]}",
            health_policy=node_pb2.HealthPolicy(heartbeat_interval=secs(1), misses=2, grace=secs(1)),
        ),
        metadata=bearer(operator),
    ).project
    registered = nodes.RegisterNode(
        node_pb2.RegisterNodeRequest(project=project.name, display_name="n1"), metadata=bearer(operator)
    )
    # Beats go to a follower only; the leader's detector (every 0.5 s, DOWN after 3 s of
    # silence) must see them through the shared last-seen data.
    on_follower = node_pb2_grpc.NodeServiceStub(cluster.channel(follower.target))

    def beat() -> int:
        return on_follower.Heartbeat(
            node_pb2.HeartbeatRequest(), metadata=bearer(registered.api_key_secret)
        ).status

    wait_for("the node UP", lambda: beat() == node_pb2.HEALTH_STATUS_UP, timeout=10, every=0.3)
    until = time.monotonic() + 9  # three detection windows
    while time.monotonic() < until:
        assert beat() == node_pb2.HEALTH_STATUS_UP
        time.sleep(0.4)
    transitions = nodes.ListTransitions(
        node_pb2.ListTransitionsRequest(parent=registered.node.name), metadata=bearer(operator)
    ).transitions
    assert node_pb2.HEALTH_STATUS_DOWN not in [t.to_status for t in transitions]
    # And the detector is live: silence is noticed, by the leader.
    wait_for(
        "the silent node DOWN",
        lambda: (
            nodes.GetNode(
                node_pb2.GetNodeRequest(name=registered.node.name), metadata=bearer(operator)
            ).node.status
            == node_pb2.HEALTH_STATUS_DOWN
        ),
        timeout=20,
        every=0.3,
    )
