"""Periodic schedules: one job per tick however many schedulers fire (also concurrently),
each budget held from the owner's balance, unfundable ticks recorded and skipped, missed
ticks skipped or caught up once, pause/resume/delete, cron expressions in a time zone."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import grpc

from coordd.domain import jobs, ledger
from coordd.domain.jobs import cron
from coordd_client.v1 import job_pb2
from tests.helpers import rpc_error
from tests.jobs.rows import count_jobs
from tests.jobs.support import seconds
from tests.support.server import bearer

TEMPLATE = job_pb2.SubmitJobRequest(
    kind=job_pb2.JOB_KIND_INFERENCE, model_ref="m", input=job_pb2.Payload(data=b"tick"), budget=10
)


def _create(env, token=None, **fields) -> job_pb2.JobSchedule:
    fields.setdefault("job", TEMPLATE)
    return env.stub.CreateJobSchedule(
        job_pb2.CreateJobScheduleRequest(schedule=job_pb2.JobSchedule(**fields)),
        metadata=bearer(token or env.alice),
    ).schedule


def _get(env, name) -> job_pb2.JobSchedule:
    return env.stub.GetJobSchedule(
        job_pb2.GetJobScheduleRequest(name=name), metadata=bearer(env.alice)
    ).schedule


def test_an_interval_schedule_queues_exactly_one_job_per_tick_with_its_budget_held(env, clock):
    rt = env.server.rt
    schedule = _create(env, interval=seconds(60))
    assert schedule.job.model_ref == "m" and schedule.job.input.data == b"tick"
    jobs.fire_schedules(rt)
    assert count_jobs() == 0  # not due yet
    clock.advance(61)
    jobs.fire_schedules(rt)
    jobs.fire_schedules(rt)  # a second run (or a second leader) finds nothing due
    assert count_jobs() == 1
    clock.advance(60)
    jobs.fire_schedules(rt)
    shown = _get(env, schedule.name)
    assert shown.ticks_fired == 2 and shown.ticks_skipped == 0
    assert count_jobs() == 2
    assert env.balance(env.alice_id) == (10_000 - 20, 20)
    assert env.get(shown.last_job).budget == 10


def test_schedulers_firing_concurrently_queue_one_job_per_tick(env, clock):
    rt = env.server.rt
    _create(env, interval=seconds(30))
    errors: list[BaseException] = []
    for tick in range(3):
        clock.advance(31)
        start = threading.Barrier(4)

        def fire(start: threading.Barrier = start) -> None:
            try:
                start.wait()
                jobs.fire_schedules(rt)
            except BaseException as exc:
                errors.append(exc)
            finally:
                rt.store.close_thread_connection()

        threads = [threading.Thread(target=fire) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert count_jobs() == tick + 1
    assert errors == []


def test_a_tick_that_cannot_be_funded_is_recorded_and_skipped(env, clock):
    rt = env.server.rt
    poor_id, poor = env.server.make_user("participant")
    with rt.store.write() as tx:
        ledger.deposit(tx, poor_id, 15, "seed")
    schedule = _create(env, token=poor, interval=seconds(10))
    clock.advance(11)
    jobs.fire_schedules(rt)  # funded: 15 -> 5
    clock.advance(10)
    jobs.fire_schedules(rt)  # 5 < 10: skipped
    shown = env.stub.GetJobSchedule(
        job_pb2.GetJobScheduleRequest(name=schedule.name), metadata=bearer(poor)
    ).schedule
    assert shown.ticks_fired == 1 and shown.ticks_skipped == 1
    assert "insufficient funds" in shown.last_skip_reason
    assert shown.next_tick_time.ToDatetime(tzinfo=UTC) > rt.now()  # it goes on
    assert count_jobs() == 1


def test_missed_ticks_are_skipped_by_default(env, clock):
    rt = env.server.rt
    schedule = _create(env, interval=seconds(300))
    clock.advance(3 * 300 + 200)  # ticks at 300, 600, 900; the last is 200 s late
    jobs.fire_schedules(rt)
    shown = _get(env, schedule.name)
    assert (shown.ticks_fired, shown.ticks_skipped) == (0, 3)
    assert count_jobs() == 0
    assert "missed" in shown.last_skip_reason


def test_missed_ticks_are_caught_up_once_when_asked(env, clock):
    rt = env.server.rt
    schedule = _create(
        env, interval=seconds(300), missed_tick_policy=job_pb2.MISSED_TICK_POLICY_CATCH_UP_ONCE
    )
    clock.advance(3 * 300 + 200)
    jobs.fire_schedules(rt)
    shown = _get(env, schedule.name)
    assert (shown.ticks_fired, shown.ticks_skipped) == (1, 2)
    assert count_jobs() == 1


def test_a_tick_just_due_fires_and_earlier_missed_ones_are_counted(env, clock):
    rt = env.server.rt
    schedule = _create(env, interval=seconds(60))
    clock.advance(5 * 60 + 10)  # the last tick is 10 s late: on time
    jobs.fire_schedules(rt)
    shown = _get(env, schedule.name)
    assert (shown.ticks_fired, shown.ticks_skipped) == (1, 4)


def test_a_paused_schedule_fires_nothing_and_resumes_from_now(env, clock):
    rt = env.server.rt
    schedule = _create(env, interval=seconds(60))
    env.stub.PauseJobSchedule(job_pb2.PauseJobScheduleRequest(name=schedule.name), metadata=bearer(env.alice))
    clock.advance(600)
    jobs.fire_schedules(rt)
    assert count_jobs() == 0
    resumed = env.stub.ResumeJobSchedule(
        job_pb2.ResumeJobScheduleRequest(name=schedule.name), metadata=bearer(env.alice)
    ).schedule
    assert not resumed.paused
    assert resumed.next_tick_time.ToDatetime(tzinfo=UTC) > rt.now()
    jobs.fire_schedules(rt)
    assert count_jobs() == 0
    clock.advance(61)
    jobs.fire_schedules(rt)
    assert count_jobs() == 1


def test_a_deleted_schedule_is_gone_and_others_cannot_see_or_touch_one(env, clock):
    _, bob = env.server.make_user("participant")
    schedule = _create(env, interval=seconds(60))
    rpc_error(
        grpc.StatusCode.NOT_FOUND,
        env.stub.PauseJobSchedule,
        job_pb2.PauseJobScheduleRequest(name=schedule.name),
        metadata=bearer(bob),
    )
    listed = env.stub.ListJobSchedules(job_pb2.ListJobSchedulesRequest(), metadata=bearer(bob)).schedules
    assert list(listed) == []
    env.stub.DeleteJobSchedule(
        job_pb2.DeleteJobScheduleRequest(name=schedule.name), metadata=bearer(env.alice)
    )
    rpc_error(grpc.StatusCode.NOT_FOUND, _get, env, schedule.name)
    clock.advance(120)
    jobs.fire_schedules(env.server.rt)
    assert count_jobs() == 0


def test_a_cron_schedule_fires_on_its_wall_clock_in_its_time_zone(env, clock):
    schedule = _create(env, cron="30 9 * * 1-5", time_zone="Europe/Paris")
    tick = schedule.next_tick_time.ToDatetime(tzinfo=UTC)
    assert tick.astimezone(cron.parse("* * * * *", "Europe/Paris").zone).strftime("%H:%M") == "09:30"
    assert tick.astimezone(cron.parse("* * * * *", "Europe/Paris").zone).weekday() < 5


def test_cron_next_ticks_across_weekends_and_dst():
    paris = cron.parse("30 9 * * 1-5", "Europe/Paris")
    # Friday 27 March 2026, 10:00 in Paris (CET) -> Monday 30 March 09:30 CEST = 07:30 UTC.
    assert paris.next_after(datetime(2026, 3, 27, 9, 0, tzinfo=UTC)) == datetime(
        2026, 3, 30, 7, 30, tzinfo=UTC
    )
    # 02:30 does not exist in Paris on 29 March 2026 (clocks go 02:00 -> 03:00): skipped.
    night = cron.parse("30 2 * * *", "Europe/Paris")
    assert night.next_after(datetime(2026, 3, 28, 12, 0, tzinfo=UTC)) == datetime(
        2026, 3, 30, 0, 30, tzinfo=UTC
    )
    assert cron.parse("*/15 * * * *").next_after(datetime(2026, 1, 1, 0, 7, tzinfo=UTC)) == datetime(
        2026, 1, 1, 0, 15, tzinfo=UTC
    )
    assert cron.parse("0 0 29 2 *").next_after(datetime(2026, 1, 1, tzinfo=UTC)).year == 2028


def test_bad_schedules_are_invalid_argument(env):
    for fields, field in (
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "0 0 31 2 *"}, "cron"),
        ({"cron": "* * * * *", "time_zone": "Mars/Olympus"}, "time_zone"),
        ({}, "cron"),
        ({"cron": "* * * * *", "interval": seconds(60)}, "cron"),
        ({"interval": seconds(0.5)}, "interval"),
    ):
        failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, _create, env, **fields)
        assert field in failure.violations, (fields, failure.violations)
    bad_template = job_pb2.SubmitJobRequest(kind=job_pb2.JOB_KIND_INFERENCE, input=job_pb2.Payload(data=b"x"))
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, _create, env, job=bad_template, interval=seconds(60)
    )
    assert "schedule.job.model_ref" in failure.violations
    unique_template = job_pb2.SubmitJobRequest()
    unique_template.CopyFrom(TEMPLATE)
    unique_template.unique.key = "k"
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, _create, env, job=unique_template, interval=seconds(60)
    )
    assert "job" in failure.violations
