"""Prometheus metrics, served on COORDD_METRICS_PORT (off when 0).

Under `coordd serve --processes N` the children record into the supervisor's
prometheus_client multiprocess directory (PROMETHEUS_MULTIPROC_DIR, set by coordd.supervisor)
and the supervisor alone serves the port: counters and histograms are summed over every
child (a restarted child's counts are kept), `coordd_open_streams` is summed over the live
children, and the per-process gauges (`coordd_scheduler_leader`, `coordd_instance_info`) carry
a `pid` label, one series per live child. A single process serves its own metrics as before
(the multiprocess modes only apply when that directory is set).
"""

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
OPEN_STREAMS = Gauge("coordd_open_streams", "Streaming RPCs open now", multiprocess_mode="livesum")
HEARTBEATS = Counter(
    "coordd_heartbeats_total", "Heartbeats accepted (added by each process's tracker four times a second)"
)
HEARTBEAT_BACKLOG = Gauge(
    "coordd_heartbeat_backlog_seconds",
    "How far behind the process reads beats (the worst of the last ~5 s): detection allows nodes that much",
    multiprocess_mode="livemax",
)
TASK_DURATION = Histogram("coordd_scheduler_task_duration_seconds", "Scheduler task run time", ["task"])
TASK_FAILURES = Counter("coordd_scheduler_task_failures_total", "Scheduler task runs that raised", ["task"])
IS_LEADER = Gauge(
    "coordd_scheduler_leader", "1 when this process runs the scheduler", multiprocess_mode="liveall"
)
INSTANCE = Gauge(
    "coordd_instance_info",
    "1 per serving process: its instance id (as GetStatus reports it) and supervisor slot",
    ["instance_id", "slot"],
    multiprocess_mode="liveall",
)


def register_instance(instance_id: str, slot: int | None) -> None:
    INSTANCE.labels(instance_id=instance_id, slot="" if slot is None else str(slot)).set(1)


def serve_metrics(host: str, port: int) -> Any:
    """Starts the HTTP exporter; returns the server (call .shutdown() to stop) or None when off."""
    if not port:
        return None
    server, _thread = start_http_server(port, addr=host)
    return server
