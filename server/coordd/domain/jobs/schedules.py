"""Periodic jobs: a schedule queues one job from its template per tick, a tick being a cron
expression's match in a time zone (`domain.jobs.cron`) or a fixed interval from creation.
Exactly one job per tick, whoever fires it (any leader, before or after a restart): the
task locks the schedule row and queues the job in the transaction that advances its next
tick. Each job's budget is held from the owner's balance as it is queued; a tick that cannot
be funded is recorded (`ticks_skipped`, `last_skip_reason`) and skipped. When several ticks
are due at once (no scheduler ran, or it was slower than the interval), only the latest can
fire and the earlier ones are counted skipped; the latest fires if it is at most
MISSED_AFTER_S late, and later than that `skip` skips it too while `catch_up_once` fires it
(one job for all the missed ticks). Either way the schedule goes on from the next tick after
now. Paused schedules fire nothing; resuming goes on from now."""

from __future__ import annotations

import base64
from dataclasses import asdict
from datetime import datetime, timedelta

from coordd.core.errors import FieldViolation, InvalidArgument, NotFound
from coordd.core.principal import Principal
from coordd.domain.jobs import cron as cron_rules
from coordd.domain.jobs.policy import policy_of
from coordd.domain.jobs.specs import MAX_UNIQUE_WINDOW_MS, JobSpec, Payload, UniqueSpec, with_scheduling
from coordd.domain.jobs.submission import insert_submissions
from coordd.domain.ledger import InsufficientFunds
from coordd.runtime import Runtime
from coordd.store.db import Tx
from coordd.store.jobs import schedules as store
from coordd.store.jobs.models import JobSchedule

POLICIES = ("skip", "catch_up_once")
MISSED_AFTER_S = 60.0
MIN_INTERVAL_MS = 1000
MAX_INTERVAL_MS = 366 * 24 * 3600 * 1000
MAX_LISTED = 1000
# Cron ticks counted one by one when many were missed; beyond this they are not counted.
MAX_COUNTED_TICKS = 10_000


def _spec_json(spec: JobSpec) -> dict[str, object]:
    data = asdict(spec)
    payload = data.pop("input")
    data["input"] = {
        "data": None if spec.input.data is None else base64.b64encode(spec.input.data).decode(),
        "uri": payload["uri"],
        "sha256": payload["sha256"],
    }
    for unused in ("schedule_time", "unique", "parents"):
        data.pop(unused)
    return data


def spec_of(schedule: JobSchedule) -> JobSpec:
    data = dict(schedule.spec)
    raw = data.pop("input")
    payload = Payload(
        None if raw["data"] is None else base64.b64decode(raw["data"]), raw["uri"], raw["sha256"]
    )
    return JobSpec(input=payload, **data)


def _first_tick(schedule: JobSchedule, after: datetime) -> datetime:
    if schedule.interval_ms:
        return after + timedelta(milliseconds=schedule.interval_ms)
    return cron_rules.parse(schedule.cron, schedule.time_zone).next_after(after)


def create(
    rt: Runtime,
    who: Principal,
    spec: JobSpec,
    cron: str,
    time_zone: str,
    interval_ms: int,
    missed_policy: str,
) -> JobSchedule:
    v: list[FieldViolation] = []
    if spec.schedule_time is not None or spec.unique is not None or spec.parents:
        v.append(FieldViolation("job", "schedule_time, unique and parents are not allowed in a template"))
    if bool(cron) == bool(interval_ms):
        v.append(FieldViolation("cron", "exactly one of cron and interval"))
    elif cron:
        try:
            cron_rules.parse(cron, time_zone or "UTC")
        except cron_rules.CronError as exc:
            v.append(FieldViolation("time_zone" if "time zone" in str(exc) else "cron", str(exc)))
    elif not MIN_INTERVAL_MS <= interval_ms <= MAX_INTERVAL_MS:
        v.append(FieldViolation("interval", "1s..366d"))
    if interval_ms and time_zone:
        v.append(FieldViolation("time_zone", "only with cron"))
    if missed_policy not in POLICIES:
        v.append(FieldViolation("missed_tick_policy", "skip or catch_up_once"))
    if v:
        raise InvalidArgument(
            "the schedule is invalid: " + "; ".join(f"{x.field}: {x.description}" for x in v), violations=v
        )
    with rt.store.write() as tx:
        row = JobSchedule(
            owner=who.user_id,
            spec=_spec_json(spec),
            cron=cron,
            time_zone=(time_zone or "UTC") if cron else "",
            interval_ms=interval_ms,
            missed_policy=missed_policy,
            paused=False,
            create_time=tx.now,
        )
        row.next_tick_time = _first_tick(row, tx.now)
        store.insert_schedule(row)
        tx.emit("job_schedule.created", f"jobSchedules/{row.id}", {"owner": f"users/{who.user_id}"})
        return row


def _not_found(schedule_id: str) -> NotFound:
    return NotFound(
        f"jobSchedules/{schedule_id} not found", metadata={"resource": f"jobSchedules/{schedule_id}"}
    )


def get(rt: Runtime, who: Principal, schedule_id: str) -> JobSchedule:
    with rt.store.read():
        row = store.schedule_by_id(schedule_id)
    if row is None or not (who.is_admin or row.owner == who.user_id):
        raise _not_found(schedule_id)
    return row


def list_mine(rt: Runtime, who: Principal) -> list[JobSchedule]:
    with rt.store.read():
        return store.schedules_of(None if who.is_admin else who.user_id, MAX_LISTED)


def set_paused(rt: Runtime, who: Principal, schedule_id: str, paused: bool) -> JobSchedule:
    with rt.store.write() as tx:
        row = store.lock_schedule(schedule_id)
        if row is None or not (who.is_admin or row.owner == who.user_id):
            raise _not_found(schedule_id)
        if row.paused != paused:
            row.paused = paused
            if not paused:  # ticks that passed while paused are not fired
                row.next_tick_time = _first_tick(row, tx.now)
            store.save_schedule(row)
            tx.emit("job_schedule.paused" if paused else "job_schedule.resumed", f"jobSchedules/{row.id}", {})
        return row


def delete(rt: Runtime, who: Principal, schedule_id: str) -> None:
    with rt.store.write() as tx:
        row = store.lock_schedule(schedule_id)
        if row is None or not (who.is_admin or row.owner == who.user_id):
            raise _not_found(schedule_id)
        store.delete_schedule(schedule_id)
        tx.emit("job_schedule.deleted", f"jobSchedules/{schedule_id}", {})


def _due_ticks(row: JobSchedule, now: datetime) -> tuple[int, datetime, datetime]:
    """(how many ticks are due, the latest due one, the first tick after now)."""
    if row.interval_ms:
        step = timedelta(milliseconds=row.interval_ms)
        count = int((now - row.next_tick_time) / step) + 1
        latest = row.next_tick_time + (count - 1) * step
        return count, latest, latest + step
    rule = cron_rules.parse(row.cron, row.time_zone)
    count, latest = 1, row.next_tick_time
    following = rule.next_after(latest)
    while following <= now and count < MAX_COUNTED_TICKS:
        count, latest = count + 1, following
        following = rule.next_after(latest)
    if following <= now:
        latest = following
        following = rule.next_after(now)
    return count, latest, following


def _fire(rt: Runtime, tx: Tx, row: JobSchedule) -> None:
    count, latest, following = _due_ticks(row, tx.now)
    late = (tx.now - latest).total_seconds() > MISSED_AFTER_S
    fire = not late or row.missed_policy == "catch_up_once"
    skipped = count - (1 if fire else 0)
    if fire:
        # The tick's unique key is a second guard (the row lock is the first): a job per tick,
        # and each job names its tick (`unique_key`).
        key = UniqueSpec(f"jobSchedules/{row.id}@{latest.isoformat()}", window_ms=MAX_UNIQUE_WINDOW_MS)
        [done] = insert_submissions(rt, tx, row.owner, [with_scheduling(spec_of(row), unique=key)])
        row.last_job = done.job.id
        row.ticks_fired += 1
        row.last_tick_time = latest
        tx.emit(
            "job_schedule.fired",
            f"jobSchedules/{row.id}",
            {"job": f"jobs/{done.job.id}", "tick": latest.isoformat(), "watch_keys": ["jobs:queue"]},
        )
    if skipped:
        row.ticks_skipped += skipped
        row.last_skip_reason = f"{skipped} tick(s) missed while the scheduler was not running"
    row.next_tick_time = following
    store.save_schedule(row)


def fire_due(rt: Runtime) -> int:
    """The scheduler's part: every due schedule queues its tick's job (see module doc);
    returns how many schedules were handled."""
    policy = policy_of(rt)
    handled = 0
    for schedule_id in store.due_schedule_ids(rt.now(), policy.task_batch):
        try:
            with rt.store.write() as tx:
                row = store.lock_schedule(schedule_id)
                if row is None or row.paused or row.next_tick_time > tx.now:
                    continue  # fired by someone else meanwhile, paused or deleted
                _fire(rt, tx, row)
        except InsufficientFunds as exc:
            with rt.store.write() as tx:  # the tick is recorded as skipped, not lost
                row = store.lock_schedule(schedule_id)
                if row is None or row.paused or row.next_tick_time > tx.now:
                    continue
                count, _, following = _due_ticks(row, tx.now)
                row.ticks_skipped += count
                row.last_skip_reason = f"insufficient funds for the budget: {exc.message}"[:500]
                row.next_tick_time = following
                store.save_schedule(row)
                tx.emit("job_schedule.skipped", f"jobSchedules/{row.id}", {"reason": row.last_skip_reason})
        handled += 1
    return handled
