"""How many messages the hot paths send PostgreSQL per transaction, recorded from the daemon's
own pool (store/pg.py rides BEGIN, savepoints and deferred writes along; store/event_log.py
names event ids, so no write waits for a RETURNING of its events). A change that adds a round
trip to one of them fails here, whatever the machine's speed. COPY's data is not a statement
and is not recorded (the gathered SubmitJob batch sends one COPY besides these)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg2.extras import LoggingConnection

from coordd.api.jobs import JobServicer
from coordd.core.principal import Principal
from coordd.domain import competition as rules
from coordd.domain import idempotency as idem
from coordd.domain import jobs
from coordd.domain.auth import credentials
from coordd.domain.jobs import gathered
from coordd.store import db as db_module
from coordd_client.v1 import competition_pb2, job_pb2, job_pb2_grpc
from tests.competition.support import bulk_users, create
from tests.jobs.support import TEST_POLICY
from tests.support.server import ServerHandle, bearer

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


class _Sent(list[str]):
    def write(self, text: str) -> None:  # LoggingConnection writes each query it sends
        self.append(text.strip())


@pytest.fixture
def recorded(settings_factory, clock, monkeypatch) -> Iterator[tuple[ServerHandle, _Sent]]:
    sent = _Sent()
    real = db_module._postgres

    def recording(url: str, settings: Any) -> Any:
        db = real(url, settings)
        db.connect_params["connection_factory"] = LoggingConnection
        initialize = db._initialize_connection

        def record(conn: LoggingConnection) -> None:
            conn.initialize(sent)
            initialize(conn)

        db._initialize_connection = record
        return db

    monkeypatch.setattr(db_module, "_postgres", recording)
    server = ServerHandle(settings_factory(scheduler_enabled=False), clock)
    jobs.set_policy(server.rt, TEST_POLICY)
    try:
        yield server, sent
    finally:
        server.stop()


def _messages(sent: _Sent, run: Any) -> list[str]:
    sent.clear()
    run()
    return [m for m in sent if m != "SELECT 1"]  # the health probe's


def test_a_gathered_submit_batch_sends_two_statements_and_its_copy(recorded):
    server, sent = recorded
    rt = server.rt
    _, token = server.make_user("participant")
    who = credentials.authenticate_token(rt, token)
    request = job_pb2.SubmitJobRequest(
        kind=job_pb2.JOB_KIND_INFERENCE, model_ref="noop", input=job_pb2.Payload(data=b"{}")
    )
    ask = gathered.Ask(rt, who, JobServicer(rt)._spec(request))
    gathered.submit_gathered(rt, [ask] * 12)  # the first takes a block of event ids

    messages = _messages(sent, lambda: gathered.submit_gathered(rt, [ask] * 12))

    assert len(messages) == 2, messages
    floor, commit = messages
    assert floor.startswith("BEGIN;") and "SAVEPOINT" in floor and "fair_seq" in floor
    assert commit.startswith("RELEASE SAVEPOINT") and "INSERT INTO event_log" in commit
    assert commit.endswith("COMMIT")


def test_a_claim_and_a_batch_completion_send_two_messages_each(recorded):
    server, sent = recorded
    stub = job_pb2_grpc.JobServiceStub(server.channel)
    _, submitter = server.make_user("participant")
    _, worker = server.make_user("provider")
    submit = job_pb2.SubmitJobRequest(
        kind=job_pb2.JOB_KIND_INFERENCE, model_ref="noop", input=job_pb2.Payload(data=b"{}")
    )
    for _ in range(20):
        stub.SubmitJob(submit, metadata=bearer(submitter))
    stub.ClaimJobs(job_pb2.ClaimJobsRequest(max_jobs=2), metadata=bearer(worker))  # warm: ids, plans

    leased: list[job_pb2.LeasedJob] = []

    def claim() -> None:
        leased.extend(stub.ClaimJobs(job_pb2.ClaimJobsRequest(max_jobs=10), metadata=bearer(worker)).jobs)

    claimed = _messages(sent, claim)
    done = job_pb2.BatchCompleteJobsRequest(
        requests=[
            job_pb2.CompleteJobRequest(lease=j.lease, output=job_pb2.Payload(data=b"ok")) for j in leased
        ]
    )
    completed = _messages(sent, lambda: stub.BatchCompleteJobs(done, metadata=bearer(worker)))

    assert len(leased) == 10
    assert len(claimed) == 2, claimed
    assert claimed[0].startswith("BEGIN;") and claimed[1].endswith("COMMIT")
    assert "INSERT INTO event_log" in claimed[1]
    assert len(completed) == 2, completed
    assert completed[0].startswith("BEGIN;") and completed[1].endswith("COMMIT")
    assert "INSERT INTO event_log" in completed[1]


def test_a_worker_stream_message_completing_and_claiming_sends_three_messages(recorded):
    """One transaction for both (jobs.complete_and_claim): the lease check, the claim (with the
    completion's UPDATE riding along), and the COMMIT with both events; two each apart."""
    server, sent = recorded
    rt = server.rt
    _, submitter = server.make_user("participant")
    worker_id, worker_token = server.make_user("provider")
    stub = job_pb2_grpc.JobServiceStub(server.channel)
    submit = job_pb2.SubmitJobRequest(
        kind=job_pb2.JOB_KIND_INFERENCE, model_ref="noop", input=job_pb2.Payload(data=b"{}")
    )
    for _ in range(30):
        stub.SubmitJob(submit, metadata=bearer(submitter))
    who = credentials.authenticate_token(rt, worker_token)
    worker = jobs.check_worker(worker_id, [], 0)
    jobs.claim(rt, worker, 2)  # warm: ids, plans
    leased = jobs.claim(rt, worker, 10)
    items = [
        (
            jobs.LeaseRef(x.job.id, x.job.attempt, x.lease_id),
            jobs.Payload(b"ok", "", hashlib.sha256(b"ok").hexdigest()),
        )
        for x in leased
    ]
    results: list[Any] = []
    messages = _messages(sent, lambda: results.append(jobs.complete_and_claim(rt, who, items, worker, 10)))

    [(outcomes, claimed)] = results
    assert len(outcomes) == 10 and not any(isinstance(o, Exception) for o in outcomes)
    assert len(claimed) == 10
    assert len(messages) == 3, messages
    assert messages[0].startswith("BEGIN;") and "FOR UPDATE" in messages[0]
    assert "UPDATE job SET state = 'succeeded'" in messages[1] and "SKIP LOCKED" in messages[1]
    assert messages[2].endswith("COMMIT") and "INSERT INTO event_log" in messages[2]


def test_a_keyed_register_batch_of_newcomers_sends_three_messages(recorded):
    server, sent = recorded
    rt = server.rt
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=5)
    comp_id = comp.name.split("/")[1]
    users = bulk_users(server, 13)
    request = competition_pb2.RegisterRequest(competition=comp.name).SerializeToString(deterministic=True)

    def asks(chosen: list[tuple[str, str]], prefix: str) -> list[rules.Ask]:
        out = []
        for user_id, _ in chosen:
            keyed = idem.InCall(
                user_id,
                f"{prefix}-{user_id}",
                "/coordd.v1.CompetitionService/Register",
                idem.request_hash("/coordd.v1.CompetitionService/Register", request),
                idem.PendingKey(user_id, f"{prefix}-{user_id}"),
            )
            who = Principal(user_id=user_id, roles=frozenset({"participant"}), kind="token")
            out.append(rules.Ask(rt, who, keyed, lambda view: b"reply"))
        return out

    rules.register_many(rt, comp_id, asks(users[:1], "warm"))  # the first takes a block of event ids
    got: list[Any] = []
    messages = _messages(sent, lambda: got.extend(rules.register_many(rt, comp_id, asks(users[1:], "k"))))

    assert not [g for g in got if isinstance(g, BaseException)], got
    assert len(messages) == 3, messages
    states, claim, commit = messages
    assert states.startswith("BEGIN;") and "UNION ALL" in states  # registered? a channel? one read
    assert claim.startswith("UPDATE")  # the seats
    assert commit.endswith("COMMIT") and "INSERT INTO event_log" in commit
    assert "idempotency" in commit.lower()  # the records, unlooked, with the commit
