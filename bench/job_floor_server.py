"""The gRPC floor for bench/jobs.py: a bare grpc.aio JobService with no auth, no database and
no signing. ClaimJobs hands out up to N jobs shaped like coordd's replies (a lease plus the
job as a claim leaves it), BatchCompleteJobs answers each ack with an attestation of the
size coordd's are. Whatever this process spends per job is spent by any Python gRPC server
carrying these messages, before it does any of the work.

    python bench/job_floor_server.py PORT_FILE JOBS
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import grpc

from coordd_client.v1 import job_pb2, job_pb2_grpc

_STATEMENT = b"x" * 690  # a coordd statement for a no-op job is about 690 bytes
_SIGNATURE = b"s" * 64


def _leased(index: int) -> job_pb2.LeasedJob:
    now = time.time()
    seconds, nanos = int(now), int(now % 1 * 1e9)
    name = f"jobs/{index:026d}"
    user = "users/" + "0" * 26
    return job_pb2.LeasedJob(
        lease={
            "job": name,
            "attempt": 1,
            "lease_id": "0" * 24,
            "expire_time": {"seconds": seconds + 60, "nanos": nanos},
        },
        job={
            "name": name,
            "submitter": user,
            "kind": job_pb2.JOB_KIND_INFERENCE,
            "model_ref": "noop",
            "input": {"data": b"{}", "sha256": "0" * 64},
            "requirements": {},
            "max_attempts": 3,
            "heartbeat_timeout": {"seconds": 60},
            "state": job_pb2.JOB_STATE_RUNNING,
            "attempt": 1,
            "provider": user,
            "create_time": {"seconds": seconds, "nanos": nanos},
            "start_time": {"seconds": seconds, "nanos": nanos},
        },
    )


class FloorJobs(job_pb2_grpc.JobServiceServicer):
    def __init__(self, jobs: int) -> None:
        self.remaining = jobs
        self.next_index = 0

    async def ClaimJobs(self, request: job_pb2.ClaimJobsRequest, context: Any) -> job_pb2.ClaimJobsResponse:
        count = min(request.max_jobs or 1, self.remaining)
        if not count:  # drained: long-poll like coordd instead of spinning the workers
            await asyncio.sleep(request.wait.ToTimedelta().total_seconds())
        self.remaining -= count
        first, self.next_index = self.next_index, self.next_index + count
        # Built per call, as coordd builds its reply from the claimed rows.
        return job_pb2.ClaimJobsResponse(jobs=[_leased(i) for i in range(first, first + count)])

    async def BatchCompleteJobs(
        self, request: job_pb2.BatchCompleteJobsRequest, context: Any
    ) -> job_pb2.BatchCompleteJobsResponse:
        results = []
        for item in request.requests:
            results.append(
                job_pb2.BatchCompleteJobsResult(
                    job=item.lease.job,
                    attestation={
                        "name": item.lease.job + "/attestation",
                        "payload_type": "application/vnd.in-toto+json",
                        "payload": _STATEMENT,
                        "signatures": [{"keyid": "0" * 16, "sig": _SIGNATURE}],
                    },
                )
            )
        return job_pb2.BatchCompleteJobsResponse(results=results)


async def main(port_file: str, jobs: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    job_pb2_grpc.add_JobServiceServicer_to_server(FloorJobs(jobs), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    with open(port_file, "w") as fh:
        fh.write(str(port))
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
