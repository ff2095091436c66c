"""SubmitJob calls that arrive together run as one batch (one transaction, one commit), yet
each caller gets exactly its own answer: a call lacking funds, repeating a unique key or
scheduled too far ahead fails alone; budgets are held with the jobs; each submitter's jobs
get consecutive fair-order values in arrival order."""

from __future__ import annotations

import threading
from datetime import timedelta

import grpc

from coordd.api.jobs import JobServicer
from coordd.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from coordd.core.principal import Principal
from coordd.domain import jobs, ledger
from coordd.domain.jobs import gathered
from coordd_client.v1 import job_pb2
from tests.jobs.rows import count_jobs, job_rows
from tests.support.server import bearer


def _request(budget: int = 10, **fields) -> job_pb2.SubmitJobRequest:
    return job_pb2.SubmitJobRequest(
        kind=job_pb2.JOB_KIND_INFERENCE,
        model_ref="hf://org/model@1",
        input=job_pb2.Payload(data=b"prompt"),
        budget=budget,
        **fields,
    )


def _fund(env, amount: int) -> tuple[str, str]:
    user_id, token = env.server.make_user("participant")
    if amount:
        with env.server.rt.store.write() as tx:
            ledger.deposit(tx, user_id, amount, "seed")
    return user_id, token


def _fair_seqs(user_id: str) -> list[int]:
    """The submitter's fair-order values, oldest job first."""
    return [r.fair_seq for r in job_rows(submitter=user_id)]


def test_concurrent_submits_from_several_submitters_each_get_their_own_answer(env):
    bob_id, bob = _fund(env, 50)  # enough for 5 jobs of 10
    carol_id, carol = _fund(env, 0)
    calls: list[tuple[str, str, job_pb2.SubmitJobRequest]] = []
    calls += [("alice", env.alice, _request()) for _ in range(40)]
    calls += [("alice-key", env.alice, _request(unique=job_pb2.UniqueOptions(key="once"))) for _ in range(8)]
    calls += [("bob", bob, _request()) for _ in range(12)]
    calls += [("carol", carol, _request()) for _ in range(4)]
    assert len(calls) == 64
    barrier = threading.Barrier(len(calls))
    results: list[tuple[str, job_pb2.SubmitJobResponse | grpc.RpcError]] = [None] * len(calls)  # type: ignore[list-item]

    def call(i: int) -> None:
        tag, token, request = calls[i]
        barrier.wait()
        try:
            results[i] = (tag, env.stub.SubmitJob(request, metadata=bearer(token)))
        except grpc.RpcError as exc:
            results[i] = (tag, exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def of(tag: str) -> list[job_pb2.SubmitJobResponse | grpc.RpcError]:
        return [r for t, r in results if t == tag]

    alice_jobs = of("alice")
    assert all(isinstance(r, job_pb2.SubmitJobResponse) for r in alice_jobs)
    assert len({r.job.name for r in alice_jobs}) == 40  # type: ignore[union-attr]
    keyed = of("alice-key")
    created = [r for r in keyed if isinstance(r, job_pb2.SubmitJobResponse)]
    assert len(created) == 1 and not created[0].already_existed
    duplicates = [r for r in keyed if isinstance(r, grpc.RpcError)]
    assert [d.code() for d in duplicates] == [grpc.StatusCode.ALREADY_EXISTS] * 7
    assert all(created[0].job.name in d.details() for d in duplicates)
    bob_results = of("bob")
    bob_ok = [r for r in bob_results if isinstance(r, job_pb2.SubmitJobResponse)]
    bob_refused = [r for r in bob_results if isinstance(r, grpc.RpcError)]
    assert len(bob_ok) == 5
    assert [r.code() for r in bob_refused] == [grpc.StatusCode.FAILED_PRECONDITION] * 7
    assert all("insufficient funds" in r.details() for r in bob_refused)
    carol_codes = [r.code() for r in of("carol") if isinstance(r, grpc.RpcError)]
    assert carol_codes == [grpc.StatusCode.FAILED_PRECONDITION] * 4

    assert ledger.balance(env.alice_id).held == 41 * 10
    assert ledger.balance(bob_id).held == 50 and ledger.balance(bob_id).available == 0
    assert ledger.balance(carol_id).held == 0
    assert count_jobs(submitter=carol_id) == 0
    # Fair order per submitter: distinct, consecutive values (no two calls share one).
    for user_id, count in ((env.alice_id, 41), (bob_id, 5)):
        seqs = sorted(_fair_seqs(user_id))
        assert seqs == list(range(seqs[0], seqs[0] + count))


def test_a_batch_with_refused_calls_answers_every_call_alone(env):
    rt = env.server.rt
    spec = JobServicer(rt)._spec
    carol_id, _ = _fund(env, 0)
    alice = Principal(env.alice_id, frozenset({"participant"}), "token")
    carol = Principal(carol_id, frozenset({"participant"}), "token")
    too_far = _request()
    too_far.schedule_time.FromDatetime(rt.store.clock() + timedelta(days=400))
    asks = [
        gathered.Ask(rt, alice, spec(_request())),
        gathered.Ask(rt, carol, spec(_request())),
        gathered.Ask(rt, alice, spec(_request(unique=job_pb2.UniqueOptions(key="k")))),
        gathered.Ask(rt, alice, spec(_request(unique=job_pb2.UniqueOptions(key="k")))),
        gathered.Ask(rt, alice, spec(_request(unique=job_pb2.UniqueOptions(key="k", return_existing=True)))),
        gathered.Ask(rt, alice, spec(too_far)),
        gathered.Ask(rt, alice, spec(_request(budget=20))),
    ]
    out = gathered.submit_gathered(rt, asks)

    assert isinstance(out[0], jobs.Submitted) and not out[0].existed
    assert isinstance(out[1], FailedPrecondition) and out[1].reason == "INSUFFICIENT_FUNDS"
    assert isinstance(out[2], jobs.Submitted) and not out[2].existed
    assert isinstance(out[3], AlreadyExists) and out[3].metadata["job"] == f"jobs/{out[2].job.id}"
    assert isinstance(out[4], jobs.Submitted) and out[4].existed and out[4].job.id == out[2].job.id
    assert isinstance(out[5], InvalidArgument)
    assert isinstance(out[6], jobs.Submitted) and out[6].job.budget == 20
    assert ledger.balance(env.alice_id).held == 10 + 10 + 20
    seqs = {j.id: j.fair_seq for j in job_rows(submitter=env.alice_id)}
    assert seqs[out[2].job.id] == seqs[out[0].job.id] + 1
    assert seqs[out[6].job.id] == seqs[out[2].job.id] + 1
    # One `job.submitted` event per new job, as one call stores it; none for refusals or duplicates.
    rows = rt.store.db.execute_sql("SELECT subject FROM event_log WHERE type = 'job.submitted'").fetchall()
    assert sorted(r[0] for r in rows) == sorted(f"jobs/{out[i].job.id}" for i in (0, 2, 6))  # type: ignore[union-attr]


def test_a_batch_of_several_submitters_gets_fair_order_in_arrival_order(env):
    rt = env.server.rt
    spec = JobServicer(rt)._spec
    bob_id, _ = _fund(env, 100)
    alice = Principal(env.alice_id, frozenset({"participant"}), "token")
    bob = Principal(bob_id, frozenset({"participant"}), "token")
    whos = [alice, bob, alice, bob, alice, alice]
    out = gathered.submit_gathered(rt, [gathered.Ask(rt, who, spec(_request())) for who in whos])

    assert all(isinstance(o, jobs.Submitted) and not o.existed for o in out)
    for who in (alice, bob):
        ids = [o.job.id for o, w in zip(out, whos, strict=True) if w is who]  # type: ignore[union-attr]
        by_id = {j.id: j.fair_seq for j in job_rows(submitter=who.user_id)}
        seqs = [by_id[i] for i in ids]
        assert seqs == list(range(seqs[0], seqs[0] + len(ids)))
    assert ledger.balance(env.alice_id).held == 40
    assert ledger.balance(bob_id).held == 20


def test_a_scheduled_job_and_a_child_in_one_batch_are_pending(env):
    rt = env.server.rt
    spec = JobServicer(rt)._spec
    alice = Principal(env.alice_id, frozenset({"participant"}), "token")
    parent = env.submit(budget=10)
    later = _request()
    later.schedule_time.FromDatetime(rt.store.clock() + timedelta(hours=1))
    child = _request(parents=[parent.name])
    asks = [gathered.Ask(rt, alice, spec(later)), gathered.Ask(rt, alice, spec(child))]
    out = gathered.submit_gathered(rt, asks)

    assert [o.job.state for o in out] == [jobs.PENDING, jobs.PENDING]  # type: ignore[union-attr]
    assert ledger.balance(env.alice_id).held == 30


def test_a_batch_meeting_a_deadlock_on_postgresql_runs_again(env):
    rt = env.server.rt
    if not rt.store.is_postgres:
        return  # a deadlock needs PostgreSQL's row locks (SQLite has one writer)
    spec = JobServicer(rt)._spec
    bob_id, _ = _fund(env, 100)
    alice = Principal(env.alice_id, frozenset({"participant"}), "token")
    bob = Principal(bob_id, frozenset({"participant"}), "token")
    holding_bob = threading.Event()
    failures: list[BaseException] = []

    def other() -> None:
        """Locks bob's account, then (once the batch waits for it) alice's: a deadlock."""
        try:
            with rt.store.write() as tx:
                # The batch's backend waits less before looking for deadlocks: it is the victim.
                rt.store.db.execute_sql("SET LOCAL deadlock_timeout = '10s'")
                ledger.deposit(tx, bob_id, 1, "seed")
                holding_bob.set()
                threading.Event().wait(0.5)  # the batch now holds alice's and waits for bob's
                ledger.deposit(tx, env.alice_id, 1, "seed")
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    holding_bob.wait(10)
    asks = [gathered.Ask(rt, alice, spec(_request())), gathered.Ask(rt, bob, spec(_request()))]
    out = gathered.submit_gathered(rt, asks)
    thread.join()

    assert failures == []
    assert all(isinstance(o, jobs.Submitted) and not o.existed for o in out)
    assert ledger.balance(env.alice_id).held == 10 and ledger.balance(bob_id).held == 10
    assert ledger.balance(bob_id).available == 100 + 1 - 10


def test_a_gathered_submit_whose_caller_gave_up_still_stores_its_job_and_hold(env, monkeypatch):
    """The gathered path has no task of its own per call: a caller cancelled while its batch
    runs gets nothing back, but its job is committed with the batch (and held), and the next
    call is served."""
    user_id, token = _fund(env, 100)
    entered, proceed, done = threading.Event(), threading.Event(), threading.Event()
    real = gathered.submit_gathered

    def held(rt, asks):  # type: ignore[no-untyped-def]
        entered.set()
        proceed.wait(10)
        try:
            return real(rt, asks)
        finally:
            done.set()

    monkeypatch.setattr(gathered, "submit_gathered", held)
    call = env.stub.SubmitJob.future(_request(budget=30), metadata=bearer(token))
    assert entered.wait(10)
    call.cancel()
    assert call.cancelled()
    proceed.set()
    assert done.wait(10)
    monkeypatch.setattr(gathered, "submit_gathered", real)
    assert [r.budget for r in job_rows(submitter=user_id)] == [30]
    assert env.balance(user_id) == (70, 30)
    second = env.stub.SubmitJob(_request(budget=20), metadata=bearer(token)).job
    assert second.state == job_pb2.JOB_STATE_QUEUED
    assert env.balance(user_id) == (50, 50)
