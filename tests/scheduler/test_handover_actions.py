"""No scheduled action is lost or done twice across leader handovers: a real task (job
deadlines: fail and refund) runs fenced under each leader in turn while the leader is paused,
crashed and replaced, and every due job is failed and refunded exactly once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from google.protobuf import duration_pb2

from coordd.domain import jobs, ledger
from coordd.scheduler.core import Task
from coordd_client.v1 import job_pb2, job_pb2_grpc
from tests.jobs.rows import count_jobs
from tests.scheduler.support import Replica, assert_one_leader_at_a_time, lease_server, ticks, wait_for
from tests.support.server import bearer

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)

JOBS = 40
BUDGET = 10


def _seconds(value: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=value))
    return out


def test_job_deadlines_due_during_pauses_and_crashes_are_each_enforced_once(settings_factory, clock):
    server = lease_server(settings_factory, clock)
    replicas: list[Replica] = []
    try:
        alice_id, alice = server.make_user("participant")
        with server.rt.store.write() as tx:
            ledger.deposit(tx, alice_id, JOBS * BUDGET, "seed")
        stub = job_pb2_grpc.JobServiceStub(server.channel)
        # Deadlines spread over ~10 s, so they fall due under every leader below.
        names = [
            stub.SubmitJob(
                job_pb2.SubmitJobRequest(
                    kind=job_pb2.JOB_KIND_INFERENCE,
                    model_ref="hf://org/model@1",
                    input=job_pb2.Payload(data=b"prompt"),
                    budget=BUDGET,
                    schedule_to_close_timeout=_seconds(1 + i * 0.25),
                ),
                metadata=bearer(alice),
            ).job.name
            for i in range(JOBS)
        ]

        deadlines = Task("jobs-enforce-deadlines", 0.1, jobs.enforce_deadlines)
        replicas = [Replica(server, name, deadlines).start() for name in "ab"]
        a, b = replicas

        def failed() -> int:
            return count_jobs(jobs.FAILED)

        assert wait_for(lambda: any(r.leading for r in replicas))
        leader = next(r for r in replicas if r.leading)
        follower = b if leader is a else a
        assert wait_for(lambda: failed() >= 3)
        gate = leader.pause_renewals()
        assert wait_for(lambda: follower.leading)
        gate.set()
        done = failed()
        assert done < JOBS, "the deadlines must keep falling due after the first handover"
        assert wait_for(lambda: failed() >= done + 3)
        follower.crash()
        assert wait_for(lambda: leader.leading)
        assert wait_for(lambda: failed() == JOBS)

        refunds = list(
            server.rt.store.db.execute_sql(
                "SELECT e.reference, COUNT(*) FROM ledger_entry e WHERE e.reason = 'job.refund' "
                "GROUP BY e.reference"
            )
        )
        assert sorted(refunds) == sorted((f"jobs/{n.split('/')[-1]}", 1) for n in names)
        balance = ledger.balance(alice_id)
        assert (balance.available, balance.held) == (JOBS * BUDGET, 0)
        assert ledger.check_consistency() == []
        events = list(
            server.rt.store.db.execute_sql(
                "SELECT subject, COUNT(*) FROM event_log WHERE type = 'job.failed' GROUP BY subject"
            )
        )
        assert len(events) == JOBS and {count for _, count in events} == {1}
        assert {n.split("/")[-1] for n in names} == {subject.split("/")[-1] for subject, _ in events}
        assert_one_leader_at_a_time(ticks(server))
    finally:
        for replica in replicas:
            if replica.scheduler.elector._executor._shutdown:
                continue
            replica.stop()
        server.stop()
