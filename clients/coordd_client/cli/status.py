"""coordctl status: the daemon's own view (GetStatus)."""

from __future__ import annotations

import argparse
from typing import Any

from coordd_client.cli.common import Context, emit, table
from coordd_client.v1 import status_pb2


def register(sub: Any) -> None:
    sub.add_parser("status", help="daemon version, backend, scheduler and counts").set_defaults(func=_status)


def _status(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.status.GetStatus(status_pb2.GetStatusRequest())
    if ctx.as_json:
        emit(ctx, reply)
        return 0
    backend = (
        status_pb2.DatabaseBackend.Name(reply.database_backend).removeprefix("DATABASE_BACKEND_").lower()
    )
    print(
        f"coordd {reply.version} on {ctx.target}: {backend}, bus {reply.event_bus}, "
        f"up {reply.uptime.ToTimedelta()}, leader {reply.scheduler.leader_instance_id or '-'}"
    )
    table(ctx, "counts", ["resource", "count"], sorted([k, v] for k, v in reply.counts.items()))
    table(
        ctx,
        "scheduler tasks",
        ["task", "runs", "failures", "last duration", "last error"],
        [
            [
                t.name,
                t.run_count,
                t.failure_count,
                f"{t.last_duration.ToTimedelta().total_seconds():.3f}s",
                t.last_error or "-",
            ]
            for t in reply.scheduler.tasks
        ],
    )
    return 0
