"""coordctl node register|list|show|rotate-key and node agent (the heartbeat agent a node runs); the
monitoring commands (incidents, ack, uptime, sla, maintenance, silence, policy, rewards)
are in node_monitoring.py."""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from coordd_client.cli import node_monitoring
from coordd_client.cli.common import Context, emit, enum_word, table
from coordd_client.errors import CoorddError, PermissionDenied, Unauthenticated
from coordd_client.v1 import node_pb2


def _node_key_from_env() -> str | None:
    """COORDCTL_NODE_KEY; the old name COORDD_NODE_KEY still works, with a note (COORDD_* are
    the daemon's variables)."""
    key = os.environ.get("COORDCTL_NODE_KEY")
    if key is None and os.environ.get("COORDD_NODE_KEY") is not None:
        print("coordctl: COORDD_NODE_KEY is deprecated; use COORDCTL_NODE_KEY", file=sys.stderr)
        key = os.environ["COORDD_NODE_KEY"]
    return key


def _status(value: int) -> str:
    return enum_word(node_pb2.HealthStatus, value)


def detect_inventory() -> node_pb2.Inventory:
    """CPU cores, memory and disk of this machine, plus NVIDIA GPUs when nvidia-smi exists."""
    memory_mb = 0
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    memory_mb = int(line.split()[1]) // 1024
    except OSError:
        pass
    inventory = node_pb2.Inventory(
        cpu_cores=os.cpu_count() or 1,
        memory_mb=memory_mb,
        disk_gb=shutil.disk_usage("/").total // 1024**3,
    )
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
            counts: dict[str, int] = {}
            for name in filter(None, (line.strip() for line in out.splitlines())):
                counts[name] = counts.get(name, 0) + 1
            inventory.gpus.extend(node_pb2.Gpu(model=m, count=c) for m, c in sorted(counts.items()))
        except (OSError, subprocess.SubprocessError):
            pass
    return inventory


def register(sub: Any) -> None:
    node = sub.add_parser("node", help="nodes and the node agent").add_subparsers(
        dest="node_command", required=True
    )
    reg = node.add_parser(
        "register", help="register this machine (detected inventory) and print its node key once"
    )
    reg.add_argument("--project", required=True, help="projects/{id}")
    reg.add_argument("--name", required=True, help="display name")
    reg.add_argument("--region", default="")
    reg.add_argument("--label", action="append", default=[], help="key=value (repeatable)")
    reg.set_defaults(func=_register)
    listing = node.add_parser("list", help="nodes of a project")
    listing.add_argument("--project", required=True)
    listing.set_defaults(func=_list)
    show = node.add_parser("show", help="one node")
    show.add_argument("node", help="nodes/{id}")
    show.set_defaults(func=_show)
    rotate = node.add_parser(
        "rotate-key", help="a new node key, printed once; the old one keeps working for --overlap"
    )
    rotate.add_argument("node", help="nodes/{id}")
    rotate.add_argument("--overlap", type=float, help="seconds the old key keeps working (default 600)")
    rotate.set_defaults(func=_rotate)
    agent = node.add_parser("agent", help="send heartbeats for this node until stopped")
    agent.add_argument("--node-key", help="or COORDCTL_NODE_KEY")
    agent.add_argument("--stream", action="store_true", help="beat over one long-lived stream (large fleets)")
    agent.add_argument("--interval", type=float, help="seconds between beats (default: what the daemon says)")
    agent.add_argument(
        "--assume-running", action="store_true", help="report every assigned workload as RUNNING"
    )
    agent.set_defaults(func=_agent)
    node_monitoring.register(node)


def _register(ctx: Context, args: argparse.Namespace) -> int:
    labels = dict(item.split("=", 1) for item in args.label if "=" in item)
    reply = ctx.client.node.RegisterNode(
        node_pb2.RegisterNodeRequest(
            project=args.project,
            display_name=args.name,
            region=args.region,
            inventory=detect_inventory(),
            labels=labels,
        )
    )
    emit(ctx, reply, f"{reply.node.name} registered; node key (shown once): {reply.api_key_secret}")
    return 0


def _list(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.node.ListNodes(node_pb2.ListNodesRequest(project=args.project))
    if ctx.as_json:
        emit(ctx, reply)
        return 0
    table(
        ctx,
        "nodes",
        ["node", "name", "status", "region"],
        [[n.name, n.display_name, _status(n.status), n.region] for n in reply.nodes],
    )
    return 0


def _show(ctx: Context, args: argparse.Namespace) -> int:
    node = ctx.client.node.GetNode(node_pb2.GetNodeRequest(name=args.node)).node
    emit(ctx, node, f"{node.name} {node.display_name}: {_status(node.status)} ({node.status_reason})")
    return 0


def _rotate(ctx: Context, args: argparse.Namespace) -> int:
    request = node_pb2.RotateNodeKeyRequest(name=args.node)
    if args.overlap is not None:
        request.overlap.FromNanoseconds(int(args.overlap * 1e9))
    reply = ctx.client.node.RotateNodeKey(request)
    until = reply.previous_key_expire_time.ToJsonString()
    emit(
        ctx,
        reply,
        f"{reply.node.name}: new node key (shown once): {reply.api_key_secret}; old key ends {until}",
    )
    return 0


# Until the daemon says otherwise (HeartbeatResponse.reconnect_backoff_max).
DEFAULT_BACKOFF_MAX_S = 15.0
# gRPC's own reconnect backoff (up to 2 minutes by default) would make every call fail
# fast long after the daemon is back: the channel retries at least this often.
CHANNEL_BACKOFF_MS = 500


class _Agent:
    """Beats until SIGTERM/SIGINT; reconnects with capped, jittered backoff when the daemon
    is unreachable, so a restart of the daemon costs a few missed beats, not the agent.
    The cap is what the daemon last said (`reconnect_backoff_max`, a third of its restart
    grace): the agent is always back before the grace is over."""

    def __init__(self, ctx: Context, args: argparse.Namespace) -> None:
        self.ctx = ctx
        self.args = args
        self.stop = threading.Event()
        self.interval = args.interval or 10.0
        self.backoff_max = DEFAULT_BACKOFF_MAX_S
        self.assignments: list[node_pb2.AssignedWorkload] = []

    def log(self, text: str, **data: Any) -> None:
        if self.ctx.as_json:
            print(json.dumps({"event": text, **data}, sort_keys=True), flush=True)
        else:
            print(text + "".join(f" {k}={v}" for k, v in data.items()), flush=True)

    def reports(self) -> list[node_pb2.WorkloadReport]:
        if not self.args.assume_running:
            return []
        return [
            node_pb2.WorkloadReport(workload=a.workload, state=node_pb2.REPLICA_STATE_RUNNING)
            for a in self.assignments
        ]

    def unary_beat(self, client: Any) -> None:
        reply = client.node.Heartbeat(node_pb2.HeartbeatRequest(workloads=self.reports()))
        self.assignments = list(reply.assignments)
        if not self.args.interval and reply.next_interval.ToTimedelta().total_seconds() > 0:
            self.interval = reply.next_interval.ToTimedelta().total_seconds()
        hinted = reply.reconnect_backoff_max.ToTimedelta().total_seconds()
        if hinted > 0:
            self.backoff_max = min(hinted, DEFAULT_BACKOFF_MAX_S)
        self.log("beat", node=reply.node, status=_status(reply.status), assignments=len(self.assignments))

    def stream_beats(self, client: Any) -> None:
        """One stream; a unary beat each minute refreshes assignments and the interval."""
        beats: queue.Queue[node_pb2.StreamHeartbeatsRequest | None] = queue.Queue()

        def requests() -> Any:
            while True:
                item = beats.get()
                if item is None:
                    return
                yield item

        done = threading.Event()
        result: dict[str, Any] = {}

        def run_stream() -> None:
            try:
                result["reply"] = client.node.StreamHeartbeats(requests(), timeout=None)
            except CoorddError as exc:
                result["error"] = exc
            done.set()

        threading.Thread(target=run_stream, daemon=True).start()
        last_refresh = 0.0
        try:
            while not self.stop.is_set() and not done.is_set():
                if time.monotonic() - last_refresh > 60:
                    self.unary_beat(client)
                    last_refresh = time.monotonic()
                beats.put(node_pb2.StreamHeartbeatsRequest(workloads=self.reports()))
                self.stop.wait(self.interval)
        finally:
            beats.put(None)
            done.wait(10)
        if "error" in result:
            raise result["error"]
        if "reply" in result:
            self.log("stream closed", beats=result["reply"].beats)

    def run(self) -> int:
        self.args.node_key = self.args.node_key or _node_key_from_env()
        if not self.args.node_key:
            print("error: --node-key (or COORDCTL_NODE_KEY) is required", flush=True)
            return 2
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        delay = 0.5
        channel_options = [
            ("grpc.initial_reconnect_backoff_ms", CHANNEL_BACKOFF_MS),
            ("grpc.min_reconnect_backoff_ms", CHANNEL_BACKOFF_MS),
            ("grpc.max_reconnect_backoff_ms", CHANNEL_BACKOFF_MS),
        ]
        connection = self.ctx.connect(
            api_key=self.args.node_key, timeout=10, retries=0, options=channel_options
        )
        with connection as client:
            while not self.stop.is_set():
                try:
                    if self.args.stream:
                        self.stream_beats(client)
                    else:
                        self.unary_beat(client)
                        self.stop.wait(self.interval)
                    delay = 0.5
                except (Unauthenticated, PermissionDenied) as exc:
                    self.log("node key refused", error=exc.message)
                    return 1
                except CoorddError as exc:
                    delay = min(delay, self.backoff_max)
                    self.log("daemon unreachable; retrying", error=exc.message, retry_in_s=round(delay, 2))
                    self.stop.wait(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, self.backoff_max)
        self.log("agent stopped")
        return 0


def _agent(ctx: Context, args: argparse.Namespace) -> int:
    return _Agent(ctx, args).run()
