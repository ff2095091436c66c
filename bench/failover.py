"""Scheduler failover time: two real `coordd serve` replicas on one fresh PostgreSQL database;
the leader is SIGSTOPped (and later SIGCONTed), then SIGKILLed, in each round. Failover is
the time from the signal until GetStatus on the other replica says it leads; stand-down is
the time from SIGCONT until the resumed replica says it does not. Prints JSON.

    PYTHONPATH=server:clients python bench/failover.py --lease 10 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import start_coordd

from coordd_client.v1 import auth_pb2, auth_pb2_grpc, status_pb2, status_pb2_grpc

SECRET = "bench-failover-secret-0123456789abcdef"
FAST_KDF = {"COORDD_ARGON2_MEMORY_KIB": "8", "COORDD_ARGON2_TIME_COST": "1", "COORDD_ARGON2_PARALLELISM": "1"}


class Replica:
    def __init__(self, url: str, lease_s: float) -> None:
        self.env = {
            "COORDD_DATABASE_URL": url,
            "COORDD_JWT_SECRET": SECRET,
            "COORDD_SCHEDULER_LEASE_S": str(lease_s),
            **FAST_KDF,
        }
        self.start()

    def start(self) -> None:
        self.proc, port, _ = start_coordd(self.env)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = status_pb2_grpc.StatusServiceStub(self.channel)

    def leads(self, token: str) -> bool | None:
        """True/False from GetStatus; None when it does not answer (stopped, dead)."""
        try:
            reply = self.stub.GetStatus(
                status_pb2.GetStatusRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=1
            )
        except grpc.RpcError:
            return None
        return reply.scheduler.is_leader and reply.scheduler.leader_instance_id == reply.instance_id

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self.channel.close()


def _until(predicate: Any, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.01)
    raise RuntimeError("timed out")


def _admin_token(url: str, replica: Replica) -> str:
    email, password = "bench@example.com", "correct horse battery"
    with tempfile.TemporaryDirectory() as data_dir:
        subprocess.run(
            [sys.executable, "-m", "coordd", "admin", "create-user", "--data-dir", data_dir,
             "--database-url", url, "--email", email, "--role", "admin", "--password", password],
            check=True, capture_output=True, env={**os.environ, **FAST_KDF},
        )  # fmt: skip
    login = auth_pb2_grpc.AuthServiceStub(replica.channel).Login(
        auth_pb2.LoginRequest(email=email, password=password), timeout=10
    )
    return str(login.access_token)


def _round(replicas: list[Replica], token: str, timeout: float) -> tuple[float, float, float]:
    """SIGSTOP the leader (the other takes over), SIGCONT it (it stands down), SIGKILL the
    new leader (the resumed one takes over again), restart the killed one."""
    _until(lambda: sum(bool(r.leads(token)) for r in replicas) == 1, timeout)
    first = next(r for r in replicas if r.leads(token))
    second = replicas[1 - replicas.index(first)]
    first.proc.send_signal(signal.SIGSTOP)
    stopped = _until(lambda: second.leads(token) is True, timeout)
    first.proc.send_signal(signal.SIGCONT)
    down = _until(lambda: first.leads(token) is False, timeout)
    second.proc.kill()
    second.proc.wait(10)
    killed = _until(lambda: first.leads(token) is True, timeout)
    second.channel.close()
    second.start()
    return stopped, down, killed


def run(admin_url: str, lease_s: float, rounds: int) -> dict[str, Any]:
    name = f"coordd_failover_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    url = f"{admin_url.rsplit('/', 1)[0]}/{name}"
    replicas: list[Replica] = []
    sigstop: list[float] = []
    stand_down: list[float] = []
    sigkill: list[float] = []
    try:
        replicas = [Replica(url, lease_s), Replica(url, lease_s)]
        token = _admin_token(url, replicas[0])
        for _ in range(rounds):
            stopped, down, killed = _round(replicas, token, lease_s * 5 + 10)
            sigstop.append(stopped)
            stand_down.append(down)
            sigkill.append(killed)
    finally:
        for replica in replicas:
            replica.kill()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    def summary(values: list[float]) -> dict[str, float]:
        return {
            "mean_s": round(statistics.fmean(values), 2),
            "max_s": round(max(values), 2),
            "each_s": [round(v, 2) for v in values],
        }

    return {
        "replicas": 2,
        "lease_s": lease_s,
        "rounds": rounds,
        "failover_after_sigstop": summary(sigstop),
        "stand_down_after_sigcont": summary(stand_down),
        "failover_after_sigkill": summary(sigkill),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lease", type=float, default=10.0, help="scheduler_lease_s (default 10)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--pg", default=os.environ.get("COORDD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    args = parser.parse_args()
    print(json.dumps(run(args.pg, args.lease, args.rounds), indent=2))


if __name__ == "__main__":
    main()
