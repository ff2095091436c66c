"""What the job tests share: the test policy, the held-balance invariant, the `Env` of one
server with a submitter and two providers, and a Duration helper (the `env` fixture is in
conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from google.protobuf import duration_pb2

from coordd.domain import jobs, ledger
from coordd_client.v1 import job_pb2, job_pb2_grpc, ledger_pb2_grpc
from tests.jobs.rows import unfinished_budgets
from tests.support.server import ServerHandle, bearer

TEST_POLICY = jobs.JobPolicy(fee_bps=1000, backoff_base_s=1.0, backoff_max_s=4.0, payload_retention_s=3600)


def held_invariant_problems() -> list[str]:
    """Each user's held balance is exactly the budgets of their unfinished jobs."""
    expected = unfinished_budgets()
    problems = []
    for user, budgets in expected.items():
        held = ledger.balance(user).held
        if held != budgets:
            problems.append(f"users/{user}: held {held}, unfinished budgets {budgets}")
    return problems


@dataclass
class Env:
    server: ServerHandle
    stub: job_pb2_grpc.JobServiceStub
    ledger: ledger_pb2_grpc.LedgerServiceStub
    admin: str
    alice_id: str
    alice: str
    worker_a_id: str
    worker_a: str
    worker_b_id: str
    worker_b: str

    def submit(self, token: str | None = None, **fields) -> job_pb2.Job:
        fields.setdefault("kind", job_pb2.JOB_KIND_INFERENCE)
        fields.setdefault("model_ref", "hf://org/model@1")
        fields.setdefault("input", job_pb2.Payload(data=b"prompt"))
        metadata = fields.pop("metadata", None) or bearer(token or self.alice)
        return self.stub.SubmitJob(job_pb2.SubmitJobRequest(**fields), metadata=metadata).job

    def claim(self, token: str, max_jobs: int = 1, wait_s: float = 0, **caps) -> list[job_pb2.LeasedJob]:
        request = job_pb2.ClaimJobsRequest(max_jobs=max_jobs, capabilities=job_pb2.Capabilities(**caps))
        if wait_s:
            request.wait.FromTimedelta(timedelta(seconds=wait_s))
        return list(self.stub.ClaimJobs(request, metadata=bearer(token)).jobs)

    def complete(
        self, token: str, lease: job_pb2.Lease, output: bytes = b"result"
    ) -> job_pb2.CompleteJobResponse:
        return self.stub.CompleteJob(
            job_pb2.CompleteJobRequest(lease=lease, output=job_pb2.Payload(data=output)),
            metadata=bearer(token),
        )

    def get(self, name: str, token: str | None = None) -> job_pb2.Job:
        return self.stub.GetJob(job_pb2.GetJobRequest(name=name), metadata=bearer(token or self.alice)).job

    def balance(self, user_id: str) -> tuple[int, int]:
        b = ledger.balance(user_id)
        return b.available, b.held


def seconds(value: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=value))
    return out
