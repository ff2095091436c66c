"""Prometheus metrics, served on COORDD_METRICS_PORT (off when 0)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPCS = Counter("coordd_rpcs_total", "RPCs handled, by method and status code", ["method", "code"])
RPC_LATENCY = Histogram(
    "coordd_rpc_duration_seconds",
    "RPC handling time (streams: until they end)",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
OPEN_STREAMS = Gauge("coordd_open_streams", "Streaming RPCs open now")
TASK_DURATION = Histogram("coordd_scheduler_task_duration_seconds", "Scheduler task run time", ["task"])
TASK_FAILURES = Counter("coordd_scheduler_task_failures_total", "Scheduler task runs that raised", ["task"])
IS_LEADER = Gauge("coordd_scheduler_leader", "1 when this process runs the scheduler")


def serve_metrics(host: str, port: int) -> Any:
    """Starts the HTTP exporter; returns the server (call .shutdown() to stop) or None when off."""
    if not port:
        return None
    server, _thread = start_http_server(port, addr=host)
    return server
