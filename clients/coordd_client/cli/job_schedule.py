"""coordctl job schedule create|list|get|pause|resume|delete: periodic jobs."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

from google.protobuf import duration_pb2

from coordd_client.cli.common import Context, emit, json_flag, resource_name, table
from coordd_client.v1 import job_pb2


def register_schedules(job: Any) -> None:
    schedule = job.add_parser("schedule", help="periodic jobs: one job per tick").add_subparsers(
        dest="schedule_command", required=True
    )
    create = schedule.add_parser("create", help="a job from this template per cron tick or interval")
    when = create.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help="five fields: minute hour day-of-month month day-of-week")
    when.add_argument("--interval", type=float, help="seconds between ticks")
    create.add_argument("--time-zone", default="", help="IANA zone of --cron (default UTC)")
    create.add_argument("--catch-up-once", action="store_true", help="one job for ticks missed while down")
    create.add_argument("--model", required=True)
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument("--input-file")
    source.add_argument("--input-data")
    source.add_argument("--input-uri")
    create.add_argument("--input-sha256")
    create.add_argument("--kind", choices=["inference", "training"], default="inference")
    create.add_argument("--budget", type=int, default=0, help="per tick, held when its job is queued")
    create.add_argument("--priority", type=int, default=0)
    create.add_argument("--label", action="append", default=[])
    create.set_defaults(func=_create)
    json_flag(create)
    listing = schedule.add_parser("list", help="your schedules")
    listing.set_defaults(func=_list)
    json_flag(listing)
    for name, func in (("get", _get), ("pause", _pause), ("resume", _resume), ("delete", _delete)):
        cmd = schedule.add_parser(name, help=f"{name} a schedule")
        cmd.add_argument("schedule", help="jobSchedules/{id} or the id")
        cmd.set_defaults(func=func)
        json_flag(cmd)


def _name(text: str) -> str:
    return resource_name("jobSchedules", text)


def _describe(s: job_pb2.JobSchedule) -> str:
    when = (
        f"cron {s.cron!r} {s.time_zone}" if s.cron else f"every {s.interval.ToTimedelta().total_seconds():g}s"
    )
    state = "paused" if s.paused else f"next {s.next_tick_time.ToJsonString()}"
    return f"{s.name}: {when}, {state}; fired {s.ticks_fired}, skipped {s.ticks_skipped}"


def _create(ctx: Context, args: argparse.Namespace) -> int:
    if args.input_uri:
        payload = job_pb2.Payload(uri=args.input_uri, sha256=args.input_sha256 or "")
    else:
        data = Path(args.input_file).read_bytes() if args.input_file else args.input_data.encode()
        payload = job_pb2.Payload(data=data, sha256=hashlib.sha256(data).hexdigest())
    template = job_pb2.SubmitJobRequest(
        kind=job_pb2.JobKind.Value(f"JOB_KIND_{args.kind.upper()}"),
        model_ref=args.model,
        input=payload,
        requirements=job_pb2.Capabilities(labels=args.label),
        budget=args.budget,
        priority=args.priority,
    )
    schedule = job_pb2.JobSchedule(job=template, cron=args.cron or "", time_zone=args.time_zone)
    if args.interval is not None:
        interval = duration_pb2.Duration()
        interval.FromNanoseconds(int(args.interval * 1e9))
        schedule.interval.CopyFrom(interval)
    if args.catch_up_once:
        schedule.missed_tick_policy = job_pb2.MISSED_TICK_POLICY_CATCH_UP_ONCE
    reply = ctx.client.job.CreateJobSchedule(job_pb2.CreateJobScheduleRequest(schedule=schedule))
    emit(ctx, reply.schedule, _describe(reply.schedule))
    return 0


def _list(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.job.ListJobSchedules(job_pb2.ListJobSchedulesRequest())
    if ctx.as_json:
        emit(ctx, reply)
        return 0
    rows = [
        [
            s.name,
            s.cron or f"{s.interval.ToTimedelta().total_seconds():g}s",
            s.paused,
            s.ticks_fired,
            s.ticks_skipped,
        ]
        for s in reply.schedules
    ]
    table(ctx, "job schedules", ["schedule", "when", "paused", "fired", "skipped"], rows)
    return 0


def _get(ctx: Context, args: argparse.Namespace) -> int:
    s = ctx.client.job.GetJobSchedule(job_pb2.GetJobScheduleRequest(name=_name(args.schedule))).schedule
    emit(ctx, s, _describe(s))
    return 0


def _pause(ctx: Context, args: argparse.Namespace) -> int:
    s = ctx.client.job.PauseJobSchedule(job_pb2.PauseJobScheduleRequest(name=_name(args.schedule))).schedule
    emit(ctx, s, _describe(s))
    return 0


def _resume(ctx: Context, args: argparse.Namespace) -> int:
    s = ctx.client.job.ResumeJobSchedule(job_pb2.ResumeJobScheduleRequest(name=_name(args.schedule))).schedule
    emit(ctx, s, _describe(s))
    return 0


def _delete(ctx: Context, args: argparse.Namespace) -> int:
    ctx.client.job.DeleteJobSchedule(job_pb2.DeleteJobScheduleRequest(name=_name(args.schedule)))
    emit(ctx, {"deleted": _name(args.schedule)}, f"{_name(args.schedule)} deleted")
    return 0
