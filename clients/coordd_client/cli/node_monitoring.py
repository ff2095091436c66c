"""coordctl node incidents|ack|uptime|sla|maintenance|silence|policy|rewards: watching a
fleet (NodeService's monitoring RPCs)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2

from coordd_client.cli.common import Context, emit, table
from coordd_client.v1 import node_pb2


def _duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=seconds))
    return out


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def _seconds(value: duration_pb2.Duration) -> float:
    return value.ToTimedelta().total_seconds()


def register(node: Any) -> None:
    incidents = node.add_parser("incidents", help="incidents of a node, workload or project, newest first")
    incidents.add_argument("parent", help="nodes/{id}, workloads/{id} or projects/{id}")
    incidents.add_argument("--open", action="store_true", help="only the open ones")
    incidents.set_defaults(func=_incidents)
    ack = node.add_parser("ack", help="acknowledge an open incident (stops escalation and reminders)")
    ack.add_argument("incident", help="incidents/{id}")
    ack.set_defaults(func=_ack)
    uptime = node.add_parser("uptime", help="uptime over 24 h, 7 d, 30 d (and a month)")
    uptime.add_argument("name", help="nodes/{id} or workloads/{id}")
    uptime.add_argument("--month", default="", help="also this calendar month, YYYY-MM (UTC)")
    uptime.set_defaults(func=_uptime)
    sla = node.add_parser("sla", help="a project's SLA report (per node and aggregate)")
    sla.add_argument("project", help="projects/{id}")
    sla.add_argument("--month", default="", help="YYYY-MM (default: the last 30 days)")
    sla.add_argument("--days", type=float, help="the last N days instead")
    sla.add_argument("--csv", action="store_true", help="CSV on stdout")
    sla.set_defaults(func=_sla)

    maintenance = node.add_parser("maintenance", help="maintenance windows").add_subparsers(
        dest="maintenance_command", required=True
    )
    plan = maintenance.add_parser("create", help="plan a window for a node or a whole project")
    # Not `target`: that is coordctl's own --target (the daemon's address).
    plan.add_argument("subject", metavar="target", help="nodes/{id} or projects/{id}")
    plan.add_argument("--start-in", type=float, default=0, help="seconds from now (default: now)")
    plan.add_argument("--duration", type=float, required=True, help="seconds")
    plan.add_argument("--reason", default="")
    plan.set_defaults(func=_maintenance_create)
    listed = maintenance.add_parser("list", help="windows of a node or project")
    listed.add_argument("subject", metavar="target", help="nodes/{id} or projects/{id}")
    listed.set_defaults(func=_maintenance_list)

    silence = node.add_parser("silence", help="silences (notifications held back)").add_subparsers(
        dest="silence_command", required=True
    )
    hush = silence.add_parser("create", help="silence a project, a node or the nodes with a label")
    hush.add_argument("project", help="projects/{id}")
    hush.add_argument("--node", default="", help="nodes/{id}")
    hush.add_argument("--label", default="", help="key=value")
    hush.add_argument("--duration", type=float, required=True, help="seconds")
    hush.add_argument("--reason", required=True)
    hush.set_defaults(func=_silence_create)
    silences = silence.add_parser("list", help="silences of a project, newest first")
    silences.add_argument("project")
    silences.set_defaults(func=_silence_list)
    end = silence.add_parser("end", help="end a silence now")
    end.add_argument("silence", help="silences/{id}")
    end.set_defaults(func=_silence_end)

    policy = node.add_parser("policy", help="a project's monitoring policy").add_subparsers(
        dest="policy_command", required=True
    )
    show = policy.add_parser("show", help="flapping, escalation and reminders")
    show.add_argument("project")
    show.set_defaults(func=_policy_show)
    change = policy.add_parser("set", help="change some of it")
    change.add_argument("project")
    change.add_argument("--flap-changes", type=int)
    change.add_argument("--flap-window", type=float, help="seconds")
    change.add_argument("--flap-settle", type=float, help="seconds")
    change.add_argument("--escalate-after", type=float, help="seconds (0: off)")
    change.add_argument("--escalation-channel", help="channels/{id} ('' to clear)")
    change.add_argument("--repeat-every", type=float, help="seconds (0: off)")
    change.set_defaults(func=_policy_set)

    rewards = node.add_parser("rewards", help="reward points: balance and entries")
    rewards.add_argument("--owner", default="", help="users/{id} (default: you)")
    rewards.set_defaults(func=_rewards)


def _incidents(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.node.ListIncidents(
        node_pb2.ListIncidentsRequest(parent=args.parent, open_only=args.open)
    )
    if ctx.as_json:
        emit(ctx, reply)
        return 0
    rows = []
    for i in reply.incidents:
        state = "open" if not i.HasField("end_time") else i.resolution or "closed"
        if i.acknowledged_by:
            state += " (acked)"
        rows.append(
            [i.name, i.subject, i.start_time.ToDatetime().isoformat(), f"{_seconds(i.duration):.0f}s", state]
        )
    table(ctx, "incidents", ["incident", "subject", "start", "duration", "state"], rows)
    return 0


def _ack(ctx: Context, args: argparse.Namespace) -> int:
    incident = ctx.client.node.AcknowledgeIncident(
        node_pb2.AcknowledgeIncidentRequest(name=args.incident)
    ).incident
    emit(ctx, incident, f"{incident.name} acknowledged by {incident.acknowledged_by}")
    return 0


def _window_row(w: node_pb2.UptimeWindow) -> list[Any]:
    return [
        w.label,
        f"{w.uptime_percent:.3f}%",
        f"{_seconds(w.down):.0f}s",
        f"{_seconds(w.maintenance):.0f}s",
        f"{_seconds(w.mass_outage):.0f}s",
    ]


def _uptime(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.node.GetUptime(node_pb2.GetUptimeRequest(name=args.name, month=args.month))
    if ctx.as_json:
        emit(ctx, reply)
        return 0
    columns = ["window", "uptime", "down", "maintenance", "mass outage"]
    table(ctx, f"uptime of {reply.name}", columns, [_window_row(w) for w in reply.windows])
    return 0


def _sla(ctx: Context, args: argparse.Namespace) -> int:
    request = node_pb2.StreamSlaReportRequest(parent=args.project, month=args.month, csv=args.csv)
    if args.days:
        now = datetime.now(UTC)
        request.start_time.CopyFrom(_timestamp(now - timedelta(days=args.days)))
        request.end_time.CopyFrom(_timestamp(now))
    rows: list[node_pb2.SlaRow] = []
    for message in ctx.client.node.StreamSlaReport(request, timeout=None):
        if args.csv:
            sys.stdout.write(message.csv)
            continue
        rows.extend(message.rows)
        if message.HasField("aggregate"):
            rows.append(message.aggregate)
    if args.csv:
        sys.stdout.flush()
        return 0
    if ctx.as_json:
        emit(ctx, {"rows": [_row_dict(r) for r in rows]})
        return 0
    columns = ["node", "name", "uptime", "down", "maintenance", "mass outage", "incidents"]
    table(
        ctx,
        f"SLA of {args.project}",
        columns,
        [[r.node or "(all)", r.display_name, *_window_row(r.uptime)[1:], r.incidents] for r in rows],
    )
    return 0


def _row_dict(r: node_pb2.SlaRow) -> dict[str, Any]:
    return {
        "node": r.node,
        "name": r.display_name,
        "uptime_percent": r.uptime.uptime_percent,
        "down_seconds": _seconds(r.uptime.down),
        "incidents": r.incidents,
    }


def _maintenance_create(ctx: Context, args: argparse.Namespace) -> int:
    start = datetime.now(UTC) + timedelta(seconds=args.start_in)
    request = node_pb2.CreateMaintenanceWindowRequest(
        target=args.subject,
        start_time=_timestamp(start),
        end_time=_timestamp(start + timedelta(seconds=args.duration)),
        reason=args.reason,
    )
    window = ctx.client.node.CreateMaintenanceWindow(request).maintenance_window
    emit(ctx, window, f"{window.name} planned for {args.subject}")
    return 0


def _maintenance_list(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.node.ListMaintenanceWindows(
        node_pb2.ListMaintenanceWindowsRequest(target=args.subject)
    )
    if ctx.as_json:
        emit(ctx, reply)
        return 0
    rows = [
        [
            w.name,
            w.target,
            w.start_time.ToDatetime().isoformat(),
            w.end_time.ToDatetime().isoformat(),
            w.reason,
        ]
        for w in reply.maintenance_windows
    ]
    table(ctx, "maintenance windows", ["window", "target", "start", "end", "reason"], rows)
    return 0


def _silence_create(ctx: Context, args: argparse.Namespace) -> int:
    key, _, value = args.label.partition("=")
    silence = node_pb2.Silence(node=args.node, label_key=key, label_value=value, reason=args.reason)
    request = node_pb2.CreateSilenceRequest(
        parent=args.project, silence=silence, duration=_duration(args.duration)
    )
    created = ctx.client.node.CreateSilence(request).silence
    emit(ctx, created, f"{created.name} until {created.end_time.ToDatetime().isoformat()}")
    return 0


def _silence_list(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.node.ListSilences(node_pb2.ListSilencesRequest(parent=args.project))
    if ctx.as_json:
        emit(ctx, reply)
        return 0
    rows = []
    for s in reply.silences:
        scope = s.node or (f"{s.label_key}={s.label_value}" if s.label_key else "project")
        until = s.end_time.ToDatetime().isoformat()
        rows.append([s.name, scope, until, "active" if s.active else "", s.created_by, s.reason])
    table(ctx, "silences", ["silence", "covers", "until", "state", "by", "reason"], rows)
    return 0


def _silence_end(ctx: Context, args: argparse.Namespace) -> int:
    silence = ctx.client.node.EndSilence(node_pb2.EndSilenceRequest(name=args.silence)).silence
    emit(ctx, silence, f"{silence.name} ended")
    return 0


def _policy_name(project: str) -> str:
    return f"{project}/monitoringPolicy"


def _policy_show(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.node.GetMonitoringPolicy(
        node_pb2.GetMonitoringPolicyRequest(name=_policy_name(args.project))
    )
    p = reply.monitoring_policy
    emit(
        ctx,
        reply,
        f"flapping: more than {p.flap_changes} changes in {_seconds(p.flap_window):.0f}s, settles after "
        f"{_seconds(p.flap_settle):.0f}s; escalate after {_seconds(p.escalate_after):.0f}s to "
        f"{p.escalation_channel or '-'}; repeat every {_seconds(p.repeat_every):.0f}s (0: off)",
    )
    return 0


def _policy_set(ctx: Context, args: argparse.Namespace) -> int:
    policy = node_pb2.MonitoringPolicy(name=_policy_name(args.project))
    paths = []
    if args.flap_changes is not None:
        policy.flap_changes = args.flap_changes
        paths.append("flap_changes")
    for flag, path in (
        ("flap_window", "flap_window"),
        ("flap_settle", "flap_settle"),
        ("escalate_after", "escalate_after"),
        ("repeat_every", "repeat_every"),
    ):
        value = getattr(args, flag)
        if value is not None:
            getattr(policy, path).CopyFrom(_duration(value))
            paths.append(path)
    if args.escalation_channel is not None:
        policy.escalation_channel = args.escalation_channel
        paths.append("escalation_channel")
    if not paths:
        print("error: nothing to change", file=sys.stderr)
        return 2
    request = node_pb2.UpdateMonitoringPolicyRequest(
        monitoring_policy=policy, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )
    reply = ctx.client.node.UpdateMonitoringPolicy(request)
    emit(ctx, reply, f"{reply.monitoring_policy.name} updated: {', '.join(paths)}")
    return 0


def _rewards(ctx: Context, args: argparse.Namespace) -> int:
    balance = ctx.client.node.GetRewardBalance(node_pb2.GetRewardBalanceRequest(owner=args.owner))
    entries = ctx.client.node.ListRewardEntries(node_pb2.ListRewardEntriesRequest(owner=args.owner))
    if ctx.as_json:
        emit(ctx, {"points": balance.points, "entries": len(entries.entries)})
        return 0
    print(f"{balance.points} points")
    rows = [
        [e.node, e.bucket_start_time.ToDatetime().isoformat(), e.points, "capped" if e.capped else ""]
        for e in entries.entries
    ]
    table(ctx, "reward entries", ["node", "hour", "points", ""], rows)
    return 0
