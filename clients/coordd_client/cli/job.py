"""coordctl job submit|get|list|watch|cancel|attestation, and coordctl worker run."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from coordd_client import attestation
from coordd_client.cli.common import Context, emit, enum_word, json_flag, resource_name, table, to_dict, watch
from coordd_client.cli.job_schedule import register_schedules
from coordd_client.errors import CoorddError, FailedPrecondition
from coordd_client.v1 import job_pb2

MAX_INLINE = 1024 * 1024
# A command that exits with this code (EX_TEMPFAIL) asks `worker run` to snooze its job.
SNOOZE_EXIT_CODE = 75
TERMINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}


def _state(value: int) -> str:
    return enum_word(job_pb2.JobState, value)


def _job_name(text: str) -> str:
    return resource_name("jobs", text)


def _seconds(value: float | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    out = duration_pb2.Duration()
    out.FromNanoseconds(int(value * 1e9))
    return out


def _timestamp(text: str) -> timestamp_pb2.Timestamp:
    """`+90` / `+90s` (seconds from now) or an RFC 3339 time."""
    out = timestamp_pb2.Timestamp()
    if text.startswith("+"):
        out.FromDatetime(datetime.now(UTC) + timedelta(seconds=float(text[1:].rstrip("s"))))
    else:
        out.FromJsonString(text)
    return out


def register(sub: Any) -> None:
    job = sub.add_parser("job", help="submit and follow jobs").add_subparsers(
        dest="job_command", required=True
    )
    submit = job.add_parser("submit", help="submit a job; its budget is held until it finishes")
    submit.add_argument("--model", required=True, help="model reference")
    source = submit.add_mutually_exclusive_group(required=True)
    source.add_argument("--input-file", help="send this file inline (at most 1 MiB)")
    source.add_argument("--input-data", help="send this text inline")
    source.add_argument("--input-uri", help="point at data elsewhere (needs --input-sha256)")
    submit.add_argument("--input-sha256", help="digest of the --input-uri data")
    submit.add_argument("--kind", choices=["inference", "training"], default="inference")
    submit.add_argument("--budget", type=int, default=0, help="in the smallest unit")
    submit.add_argument("--priority", type=int, default=0)
    submit.add_argument("--max-attempts", type=int, default=0)
    submit.add_argument("--label", action="append", default=[], help="required worker label (repeatable)")
    submit.add_argument("--gpus", type=int, default=0)
    submit.add_argument("--heartbeat-timeout", type=float, help="seconds")
    submit.add_argument("--start-to-close-timeout", type=float, help="seconds")
    submit.add_argument(
        "--schedule-time", type=_timestamp, help="claimable from then: RFC 3339, or +SECONDS from now"
    )
    submit.add_argument(
        "--parent", action="append", default=[], help="job that must succeed first (repeatable)"
    )
    submit.add_argument("--unique-key", help="a duplicate of an unfinished job with this key is refused")
    submit.add_argument(
        "--unique-window", type=float, help="seconds the key stays taken (default: until finished)"
    )
    submit.add_argument("--unique-per-model", action="store_true", help="the key is per model too")
    submit.add_argument(
        "--return-existing",
        action="store_true",
        help="a duplicate prints the existing job instead of failing",
    )
    submit.set_defaults(func=_submit)
    json_flag(submit)
    for name, func, helptext in (
        ("get", _get, "show a job"),
        ("watch", _watch, "follow a job until it finishes"),
        ("cancel", _cancel, "cancel a job (refunded if it has not started)"),
        ("attestation", _attestation, "fetch a job's signed attestation and verify it offline"),
    ):
        cmd = job.add_parser(name, help=helptext)
        cmd.add_argument("job", help="jobs/{id} or the id")
        if name == "cancel":
            cmd.add_argument("--reason", default="")
        if name in ("get", "watch"):
            cmd.add_argument(
                "--view",
                choices=["basic", "full"],
                help="full: with the inline input/output bytes (default for `get --json`); basic: without",
            )
        cmd.set_defaults(func=func)
        json_flag(cmd)
    listing = job.add_parser("list", help="your jobs")
    listing.add_argument(
        "--state", choices=["pending", "queued", "running", "succeeded", "failed", "cancelled"]
    )
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(func=_list)
    json_flag(listing)

    limit = job.add_parser("limit", help="concurrency caps (admins)").add_subparsers(
        dest="limit_command", required=True
    )
    setting = limit.add_parser(
        "set", help="at most N running jobs of a submitter, model or label (0 removes)"
    )
    setting.add_argument("scope", choices=["submitter", "model", "label"])
    setting.add_argument("key", help="users/{id} or * (each submitter), a model ref, or a label")
    setting.add_argument("max_running", type=int)
    setting.set_defaults(func=_limit_set)
    json_flag(setting)
    listing_limits = limit.add_parser("list", help="every cap")
    listing_limits.set_defaults(func=_limit_list)
    json_flag(listing_limits)

    register_schedules(job)

    worker = sub.add_parser("worker", help="run jobs as a provider").add_subparsers(
        dest="worker_command", required=True
    )
    run = worker.add_parser(
        "run",
        help="claim jobs and run CMD for each",
        description=(
            "Runs CMD for each claimed job. {input} in CMD is replaced by a file holding the job's "
            "input (otherwise the input goes to stdin), {input_uri} by its URI, {output} by a file to "
            "write the result to (otherwise stdout is the result), {job} by the job name."
        ),
    )
    run.add_argument("--label", action="append", default=[], help="capability label (repeatable)")
    run.add_argument("--gpus", type=int, default=0)
    run.add_argument("--wait", type=float, default=20.0, help="long-poll seconds per claim")
    run.add_argument("--once", action="store_true", help="exit after the first job")
    run.add_argument(
        "--max-jobs", type=int, default=0, help="exit after this many jobs (0 = run until stopped)"
    )
    run.add_argument(
        "--snooze-seconds",
        type=float,
        default=60.0,
        help=f"when CMD exits {SNOOZE_EXIT_CODE} (EX_TEMPFAIL) the job is snoozed this long, unless the"
        " first line of its stdout is a number of seconds; the attempt is not spent",
    )
    json_flag(run)
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    run.set_defaults(func=_worker)


def _submit(ctx: Context, args: argparse.Namespace) -> int:
    if args.input_uri:
        if not args.input_sha256:
            print("error: --input-uri needs --input-sha256", file=sys.stderr)
            return 2
        payload = job_pb2.Payload(uri=args.input_uri, sha256=args.input_sha256)
    else:
        data = Path(args.input_file).read_bytes() if args.input_file else args.input_data.encode()
        payload = job_pb2.Payload(data=data, sha256=hashlib.sha256(data).hexdigest())
    request = job_pb2.SubmitJobRequest(
        kind=job_pb2.JobKind.Value(f"JOB_KIND_{args.kind.upper()}"),
        model_ref=args.model,
        input=payload,
        requirements=job_pb2.Capabilities(labels=args.label, gpus=args.gpus),
        budget=args.budget,
        priority=args.priority,
        max_attempts=args.max_attempts,
        heartbeat_timeout=_seconds(args.heartbeat_timeout),
        start_to_close_timeout=_seconds(args.start_to_close_timeout),
        schedule_time=args.schedule_time,
        parents=[_job_name(p) for p in args.parent],
    )
    if args.unique_key:
        request.unique.CopyFrom(
            job_pb2.UniqueOptions(
                key=args.unique_key,
                per_model=args.unique_per_model,
                window=_seconds(args.unique_window),
                return_existing=args.return_existing,
            )
        )
    reply = ctx.client.job.SubmitJob(request)
    job = reply.job
    emit(
        ctx, job, f"{job.name} {_state(job.state)}" + (" (already existed)" if reply.already_existed else "")
    )
    return 0


def _view(args: argparse.Namespace, default_full: bool) -> int:
    full = args.view == "full" if args.view else default_full
    return job_pb2.JOB_VIEW_FULL if full else job_pb2.JOB_VIEW_BASIC


def _describe(job: job_pb2.Job) -> str:
    lines = [
        f"{job.name}: {_state(job.state)} (attempt {job.attempt}/{job.max_attempts}, budget {job.budget})"
    ]
    if job.provider:
        lines.append(f"  provider {job.provider}")
    if job.error:
        lines.append(f"  error: {job.error}")
    if job.input.size_bytes:
        lines.append(f"  input {job.input.size_bytes} bytes")
    if job.output.sha256:
        size = f" ({job.output.size_bytes} bytes)" if job.output.size_bytes else ""
        lines.append(f"  output sha256 {job.output.sha256}{size}")
    return "\n".join(lines)


def _get(ctx: Context, args: argparse.Namespace) -> int:
    # The description needs no payload bytes; JSON output shows the whole job, as it always did.
    request = job_pb2.GetJobRequest(name=_job_name(args.job), view=_view(args, ctx.as_json))
    job = ctx.client.job.GetJob(request).job
    emit(ctx, job, _describe(job))
    return 0


def _list(ctx: Context, args: argparse.Namespace) -> int:
    state = job_pb2.JobState.Value(f"JOB_STATE_{args.state.upper()}") if args.state else 0
    reply = ctx.client.job.ListJobs(job_pb2.ListJobsRequest(page_size=args.limit, state=state))
    if ctx.as_json:
        emit(ctx, reply)
        return 0
    table(
        ctx,
        "jobs",
        ["job", "state", "attempt", "budget", "model"],
        [[j.name, _state(j.state), j.attempt, j.budget, j.model_ref] for j in reply.jobs],
    )
    return 0


def _watch(ctx: Context, args: argparse.Namespace) -> int:
    """Follows the job; a stream the daemon or a proxy drops is re-opened (it starts again
    with the job's current state), with a note on stderr."""
    last: job_pb2.Job | None = None
    request = job_pb2.WatchJobRequest(name=_job_name(args.job), view=_view(args, False))
    stream = watch(ctx, lambda: ctx.client.job.WatchJob(request, timeout=None))
    for update in stream:
        last = update.job
        if ctx.as_json:  # JSON lines: one document per update, one line each
            print(json.dumps(to_dict(update), sort_keys=True), flush=True)
        else:
            position = f", position {update.queue_position}" if update.queue_position else ""
            state = _state(last.state)
            print(f"{last.name} {state} attempt {last.attempt}{position} progress {last.progress:.0%}")
        if last.state in TERMINAL:
            stream.cancel()
            break
    return 0 if last is not None and last.state == job_pb2.JOB_STATE_SUCCEEDED else 1


def _limits_out(ctx: Context, reply: Any) -> int:
    if ctx.as_json:
        emit(ctx, reply)
        return 0
    rows = [[enum_word(job_pb2.JobLimitScope, x.scope), x.key, x.max_running] for x in reply.limits]
    table(ctx, "job limits", ["scope", "key", "max_running"], rows)
    return 0


def _limit_set(ctx: Context, args: argparse.Namespace) -> int:
    scope = job_pb2.JobLimitScope.Value(f"JOB_LIMIT_SCOPE_{args.scope.upper()}")
    key = resource_name("users", args.key) if args.scope == "submitter" and args.key != "*" else args.key
    limit = job_pb2.JobLimit(scope=scope, key=key, max_running=args.max_running)
    return _limits_out(ctx, ctx.client.job.SetJobLimit(job_pb2.SetJobLimitRequest(limit=limit)))


def _limit_list(ctx: Context, args: argparse.Namespace) -> int:
    return _limits_out(ctx, ctx.client.job.ListJobLimits(job_pb2.ListJobLimitsRequest()))


def _cancel(ctx: Context, args: argparse.Namespace) -> int:
    job = ctx.client.job.CancelJob(job_pb2.CancelJobRequest(name=_job_name(args.job), reason=args.reason)).job
    emit(ctx, job, _describe(job))
    return 0


def _attestation(ctx: Context, args: argparse.Namespace) -> int:
    key = ctx.client.job.GetSigningKey(job_pb2.GetSigningKeyRequest())
    env = ctx.client.job.GetAttestation(job_pb2.GetAttestationRequest(name=_job_name(args.job))).attestation
    try:
        statement = attestation.verify_envelope(env.envelope_json, key.public_key)
    except attestation.AttestationError as exc:
        emit(ctx, {"verified": False, "error": str(exc)}, f"attestation does NOT verify: {exc}")
        return 1
    emit(
        ctx,
        {"verified": True, "key_id": key.key_id, "statement": statement},
        f"attestation verified with key {key.key_id}: output sha256 "
        f"{statement['subject'][0]['digest']['sha256']}",
    )
    return 0


# -- worker ------------------------------------------------------------------------------


class _Worker:
    """Claims jobs one at a time, runs the command with heartbeats, reports the outcome.

    SIGTERM/SIGINT drain: no new claims; the job in hand runs to its end and is reported.
    """

    def __init__(self, ctx: Context, args: argparse.Namespace) -> None:
        self.ctx = ctx
        self.args = args
        self.cmd = list(args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd)
        self.draining = threading.Event()
        self.done = 0

    def log(self, text: str, **data: Any) -> None:
        """One line per event: JSON lines with --json (a worker's log is a stream)."""
        if self.ctx.as_json:
            print(json.dumps({"event": text, **data}, sort_keys=True), flush=True)
        else:
            print(text + "".join(f" {k}={v}" for k, v in data.items()), flush=True)

    def run(self) -> int:
        if not self.cmd:
            print("error: give the command after --", file=sys.stderr)
            return 2
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.draining.set())
        capabilities = job_pb2.Capabilities(labels=self.args.label, gpus=self.args.gpus)
        while not self.draining.is_set():
            reply = self.ctx.client.job.ClaimJobs(
                job_pb2.ClaimJobsRequest(
                    capabilities=capabilities, max_jobs=1, wait=_seconds(self.args.wait)
                ),
                timeout=self.args.wait + 30,
            )
            for leased in reply.jobs:
                self.process(leased)
                self.done += 1
            limit = 1 if self.args.once else self.args.max_jobs
            if limit and self.done >= limit:
                break
        self.log("worker stopped", jobs=self.done)
        return 0

    def process(self, leased: job_pb2.LeasedJob) -> None:
        job, lease = leased.job, leased.lease
        self.log("job claimed", job=job.name, attempt=lease.attempt)
        with tempfile.TemporaryDirectory(prefix="coordctl-job-") as tmp:
            input_path = Path(tmp) / "input"
            output_path = Path(tmp) / "output"
            input_path.write_bytes(job.input.data)
            uses_input = any("{input}" in a for a in self.cmd)
            uses_output = any("{output}" in a for a in self.cmd)
            argv = [
                a.replace("{input}", str(input_path))
                .replace("{output}", str(output_path))
                .replace("{input_uri}", job.input.uri)
                .replace("{job}", job.name)
                for a in self.cmd
            ]
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL if uses_input else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                # COORDCTL_JOB*: the client's prefix; the COORDD_JOB* names stay for old scripts.
                env={
                    **os.environ,
                    "COORDCTL_JOB": job.name,
                    "COORDCTL_JOB_ATTEMPT": str(lease.attempt),
                    "COORDD_JOB": job.name,
                    "COORDD_JOB_ATTEMPT": str(lease.attempt),
                },
            )
            stop_beats = threading.Event()
            outcome: dict[str, Any] = {}
            interval = job.heartbeat_timeout.ToTimedelta().total_seconds() / 3 or 20.0
            beats = threading.Thread(
                target=self.heartbeat,
                args=(lease, proc, stop_beats, max(interval, 0.2), outcome),
                daemon=True,
            )
            beats.start()
            stdout, stderr = proc.communicate(None if uses_input else job.input.data)
            stop_beats.set()
            beats.join()
            if outcome.get("lost") == "cancelled":
                self.log("job cancelled", job=job.name)
                return
            if outcome.get("lost"):
                self.log("lease lost; result dropped", job=job.name, reason=outcome["lost"])
                return
            if proc.returncode == SNOOZE_EXIT_CODE:
                self.snooze(lease, job, stdout)
                return
            if proc.returncode == 0:
                result = output_path.read_bytes() if uses_output and output_path.exists() else stdout
                self.complete(lease, job, result)
            else:
                tail = stderr.decode(errors="replace")[-2000:]
                self.fail(lease, job, f"exit code {proc.returncode}: {tail}", retryable=True)

    def heartbeat(
        self,
        lease: job_pb2.Lease,
        proc: subprocess.Popen[bytes],
        stop: threading.Event,
        every: float,
        outcome: dict[str, Any],
    ) -> None:
        while not stop.wait(every):
            try:
                reply = self.ctx.client.job.HeartbeatJob(job_pb2.HeartbeatJobRequest(lease=lease))
            except FailedPrecondition as exc:  # the lease moved on (expired and re-leased)
                outcome["lost"] = exc.reason or "stale lease"
                proc.kill()
                return
            except CoorddError:
                continue  # transient; the next beat tries again
            if reply.cancelled:
                outcome["lost"] = "cancelled"
                proc.kill()
                return

    def complete(self, lease: job_pb2.Lease, job: job_pb2.Job, result: bytes) -> None:
        if len(result) > MAX_INLINE:
            self.fail(
                lease, job, f"output is {len(result)} bytes; at most {MAX_INLINE} inline", retryable=False
            )
            return
        try:
            reply = self.ctx.client.job.CompleteJob(
                job_pb2.CompleteJobRequest(
                    lease=lease,
                    output=job_pb2.Payload(data=result, sha256=hashlib.sha256(result).hexdigest()),
                )
            )
        except FailedPrecondition as exc:
            self.log("completion refused", job=job.name, reason=exc.reason)
            return
        self.log(
            "job completed", job=job.name, sha256=reply.job.output.sha256, attestation=reply.attestation.name
        )

    def snooze(self, lease: job_pb2.Lease, job: job_pb2.Job, stdout: bytes) -> None:
        first = stdout.decode(errors="replace").strip().splitlines()[:1]
        try:
            delay = float(first[0]) if first else self.args.snooze_seconds
        except ValueError:
            delay = self.args.snooze_seconds
        until = timestamp_pb2.Timestamp()
        until.FromDatetime(datetime.now(UTC) + timedelta(seconds=max(delay, 1.0)))
        try:
            reply = self.ctx.client.job.SnoozeJob(
                job_pb2.SnoozeJobRequest(
                    lease=lease, snooze_time=until, reason="snoozed by the worker's command"
                )
            )
        except FailedPrecondition as exc:
            self.log("snooze refused", job=job.name, reason=exc.reason)
            return
        self.log("job snoozed", job=job.name, until=until.ToJsonString(), state=_state(reply.job.state))

    def fail(self, lease: job_pb2.Lease, job: job_pb2.Job, error: str, retryable: bool) -> None:
        try:
            reply = self.ctx.client.job.FailJob(
                job_pb2.FailJobRequest(lease=lease, error=error, retryable=retryable)
            )
        except FailedPrecondition as exc:
            self.log("failure report refused", job=job.name, reason=exc.reason)
            return
        self.log("job failed", job=job.name, state=_state(reply.job.state), error=error.splitlines()[0][:200])


def _worker(ctx: Context, args: argparse.Namespace) -> int:
    return _Worker(ctx, args).run()
