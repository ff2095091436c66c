"""Shared helpers for the node tests: a server whose scheduler is off (tests run the
tasks themselves, so nothing races them), a fleet driver, and a real webhook receiver."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import duration_pb2

from coordd.adapters import heartbeats
from coordd_client.v1 import node_pb2, node_pb2_grpc, notification_pb2_grpc
from tests.support.server import Clock, ServerHandle, bearer


def serve(settings_factory, clock: Clock) -> Iterator[ServerHandle]:  # type: ignore[no-untyped-def]
    """Body of each node test module's `srv` fixture."""
    handle = ServerHandle(settings_factory(scheduler_enabled=False), clock)
    try:
        yield handle
    finally:
        handle.stop()


def secs(value: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=value))
    return out


class Fleet:
    """Drives NodeService (and NotificationService, `notify`) as an operator and as nodes
    would, and runs scheduler tasks."""

    def __init__(self, srv: ServerHandle) -> None:
        self.srv = srv
        self.stub = node_pb2_grpc.NodeServiceStub(srv.channel)
        self.notify = notification_pb2_grpc.NotificationServiceStub(srv.channel)
        self.owner_id, self.token = srv.make_user("node_operator")
        self.refresh()

    def refresh(self) -> None:
        """A new access token after the clock moved past the old one's expiry."""
        self.token, _ = self.srv.rt.tokens.issue(self.owner_id, ["node_operator"], self.srv.rt.now())
        self.md = bearer(self.token)

    def rebind(self, srv: ServerHandle) -> None:
        """Talks to another server (a restarted daemon on the same database)."""
        self.srv = srv
        self.stub = node_pb2_grpc.NodeServiceStub(srv.channel)
        self.notify = notification_pb2_grpc.NotificationServiceStub(srv.channel)

    def project(self, **policy: Any) -> node_pb2.Project:
        health = node_pb2.HealthPolicy(
            heartbeat_interval=secs(policy.pop("interval", 1)),
            misses=policy.pop("misses", 2),
            grace=secs(policy.pop("grace", 1)),
            successes_before_up=policy.pop("successes", 2),
            mass_outage_share=policy.pop("share", 0.5),
            mass_outage_min_nodes=policy.pop("min_nodes", 3),
        )
        reward = node_pb2.RewardPolicy(
            points_per_up_hour=policy.pop("points", 10), cap_per_day=policy.pop("cap", 200)
        )
        assert not policy, policy
        request = node_pb2.CreateProjectRequest(
            display_name="Fleet", slug=f"p-{uuid.uuid4().hex[:8]}", health_policy=health, reward_policy=reward
        )
        return self.stub.CreateProject(request, metadata=self.md).project

    def node(
        self, project: node_pb2.Project, name: str = "n", *, token: str | None = None, **fields: Any
    ) -> tuple[node_pb2.Node, str]:
        inventory = node_pb2.Inventory(
            cpu_cores=fields.pop("cpu", 4),
            memory_mb=fields.pop("mem", 8192),
            disk_gb=fields.pop("disk", 100),
            gpus=[node_pb2.Gpu(model=m, count=c) for m, c in fields.pop("gpus", [])],
        )
        request = node_pb2.RegisterNodeRequest(
            project=project.name,
            display_name=name,
            region=fields.pop("region", ""),
            inventory=inventory,
            labels=fields.pop("labels", {}),
        )
        assert not fields, fields
        reply = self.stub.RegisterNode(request, metadata=bearer(token or self.token))
        return reply.node, reply.api_key_secret

    def beat(self, key: str, *reports: tuple[str, int]) -> node_pb2.HeartbeatResponse:
        request = node_pb2.HeartbeatRequest(
            workloads=[node_pb2.WorkloadReport(workload=w, state=s) for w, s in reports]
        )
        return self.stub.Heartbeat(request, metadata=bearer(key))

    def up(self, key: str) -> node_pb2.HeartbeatResponse:
        self.beat(key)
        reply = self.beat(key)
        assert reply.status == node_pb2.HEALTH_STATUS_UP
        return reply

    def get(self, name: str) -> node_pb2.Node:
        return self.stub.GetNode(node_pb2.GetNodeRequest(name=name), metadata=self.md).node

    def workload(self, name: str) -> node_pb2.Workload:
        return self.stub.GetWorkload(node_pb2.GetWorkloadRequest(name=name), metadata=self.md).workload

    def transitions(self, name: str) -> list[node_pb2.Transition]:
        reply = self.stub.ListTransitions(node_pb2.ListTransitionsRequest(parent=name), metadata=self.md)
        return list(reversed(reply.transitions))

    def incidents(self, name: str) -> list[node_pb2.Incident]:
        reply = self.stub.ListIncidents(node_pb2.ListIncidentsRequest(parent=name), metadata=self.md)
        return list(reply.incidents)

    def flush(self) -> int:
        return self.srv.call(heartbeats.tracker_for(self.srv.rt).flush())

    def run(self, fn: Any) -> Any:
        return self.srv.call(self.srv.rt.run(fn, self.srv.rt))

    def detect(self) -> int:
        return self.run(heartbeats.detect_down)


def statuses(transitions: list[node_pb2.Transition]) -> list[str]:
    return [node_pb2.HealthStatus.Name(t.to_status)[len("HEALTH_STATUS_") :] for t in transitions]


class Receiver:
    """A real HTTP endpoint: records every POST; the first `fail_first` get a 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    failing = len(receiver.requests) <= receiver.fail_first
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for _, body in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def next_utc_day_at(hour: int, minute: int, now: datetime) -> float:
    """Seconds from `now` to the next day's hh:mm UTC: hour buckets then never straddle a day."""
    target = (
        (now + timedelta(days=1)).astimezone(UTC).replace(hour=hour, minute=minute, second=0, microsecond=0)
    )
    return (target - now).total_seconds()
