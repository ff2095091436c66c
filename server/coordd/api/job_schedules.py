"""JobService's periodic schedules: Create/Get/List/Pause/Resume/DeleteJobSchedule (a mixin
of JobServicer, which supplies `rt` and `_spec`, the template's validation)."""

from __future__ import annotations

from typing import Any

from coordd.api.convert import duration, parse_name
from coordd.api.job_messages import KIND_PROTO, ms_of
from coordd.core.errors import FieldViolation, InvalidArgument
from coordd.core.principal import require_user
from coordd.domain import jobs
from coordd.runtime import Runtime
from coordd_client.v1 import job_pb2

_POLICIES = {
    job_pb2.MISSED_TICK_POLICY_UNSPECIFIED: "skip",
    job_pb2.MISSED_TICK_POLICY_SKIP: "skip",
    job_pb2.MISSED_TICK_POLICY_CATCH_UP_ONCE: "catch_up_once",
}
_POLICY_PROTO = {
    "skip": job_pb2.MISSED_TICK_POLICY_SKIP,
    "catch_up_once": job_pb2.MISSED_TICK_POLICY_CATCH_UP_ONCE,
}


def _ms(ms: int) -> dict[str, int] | None:
    return {"seconds": ms // 1000, "nanos": ms % 1000 * 1_000_000} if ms else None


def _template(spec: jobs.JobSpec) -> dict[str, Any]:
    payload: dict[str, Any] = {"sha256": spec.input.sha256}
    if spec.input.data is not None:
        payload["data"] = spec.input.data
    else:
        payload["uri"] = spec.input.uri
    return {
        "kind": KIND_PROTO.get(spec.kind, job_pb2.JOB_KIND_UNSPECIFIED),
        "model_ref": spec.model_ref,
        "input": payload,
        "requirements": {"labels": list(spec.labels), "gpus": spec.gpus},
        "budget": spec.budget,
        "priority": spec.priority,
        "max_attempts": spec.max_attempts,
        "schedule_to_start_timeout": _ms(spec.schedule_to_start_ms),
        "start_to_close_timeout": _ms(spec.start_to_close_ms),
        "heartbeat_timeout": _ms(spec.heartbeat_ms),
        "schedule_to_close_timeout": _ms(spec.schedule_to_close_ms),
    }


def schedule_to_proto(row: Any) -> job_pb2.JobSchedule:
    out = job_pb2.JobSchedule(
        name=f"jobSchedules/{row.id}",
        owner=f"users/{row.owner}",
        job=_template(jobs.schedule_spec(row)),
        cron=row.cron,
        time_zone=row.time_zone,
        missed_tick_policy=_POLICY_PROTO.get(row.missed_policy, job_pb2.MISSED_TICK_POLICY_UNSPECIFIED),
        paused=row.paused,
        last_job=f"jobs/{row.last_job}" if row.last_job else "",
        ticks_fired=row.ticks_fired,
        ticks_skipped=row.ticks_skipped,
        last_skip_reason=row.last_skip_reason,
    )
    if row.interval_ms:
        out.interval.CopyFrom(duration(row.interval_ms / 1000))
    for field, value in (
        ("next_tick_time", row.next_tick_time),
        ("last_tick_time", row.last_tick_time),
        ("create_time", row.create_time),
    ):
        if value is not None:
            getattr(out, field).FromDatetime(value)
    return out


def _schedule_id(name: str) -> str:
    return parse_name(name, "jobSchedules", "name")


class JobScheduleMethods:
    rt: Runtime

    def _spec(self, r: job_pb2.SubmitJobRequest) -> jobs.JobSpec:  # supplied by JobServicer
        raise NotImplementedError

    async def CreateJobSchedule(
        self, request: job_pb2.CreateJobScheduleRequest, context: Any
    ) -> job_pb2.CreateJobScheduleResponse:
        who = require_user()
        s = request.schedule
        if not request.HasField("schedule") or not s.HasField("job"):
            raise InvalidArgument(
                "schedule.job is required", violations=[FieldViolation("schedule.job", "required")]
            )
        if s.missed_tick_policy not in _POLICIES:
            raise InvalidArgument(
                "schedule.missed_tick_policy: unknown",
                violations=[FieldViolation("schedule.missed_tick_policy", "unknown")],
            )
        try:
            spec = self._spec(s.job)
        except InvalidArgument as exc:
            violations = [FieldViolation(f"schedule.job.{v.field}", v.description) for v in exc.violations]
            raise InvalidArgument(exc.message, violations=violations) from exc
        interval = ms_of(s.interval, s.HasField("interval")) or 0
        if interval < 0:
            raise InvalidArgument(
                "schedule.interval: 1s..366d", violations=[FieldViolation("interval", "1s..366d")]
            )
        row = await self.rt.run(
            jobs.create_schedule,
            self.rt,
            who,
            spec,
            s.cron,
            s.time_zone,
            interval,
            _POLICIES[s.missed_tick_policy],
        )
        return job_pb2.CreateJobScheduleResponse(schedule=schedule_to_proto(row))

    async def GetJobSchedule(
        self, request: job_pb2.GetJobScheduleRequest, context: Any
    ) -> job_pb2.GetJobScheduleResponse:
        who = require_user()
        row = await self.rt.run(jobs.get_schedule, self.rt, who, _schedule_id(request.name))
        return job_pb2.GetJobScheduleResponse(schedule=schedule_to_proto(row))

    async def ListJobSchedules(
        self, request: job_pb2.ListJobSchedulesRequest, context: Any
    ) -> job_pb2.ListJobSchedulesResponse:
        who = require_user()
        rows = await self.rt.run(jobs.list_schedules, self.rt, who)
        return job_pb2.ListJobSchedulesResponse(schedules=[schedule_to_proto(r) for r in rows])

    async def PauseJobSchedule(
        self, request: job_pb2.PauseJobScheduleRequest, context: Any
    ) -> job_pb2.PauseJobScheduleResponse:
        who = require_user()
        row = await self.rt.run(jobs.pause_schedule, self.rt, who, _schedule_id(request.name), True)
        return job_pb2.PauseJobScheduleResponse(schedule=schedule_to_proto(row))

    async def ResumeJobSchedule(
        self, request: job_pb2.ResumeJobScheduleRequest, context: Any
    ) -> job_pb2.ResumeJobScheduleResponse:
        who = require_user()
        row = await self.rt.run(jobs.pause_schedule, self.rt, who, _schedule_id(request.name), False)
        return job_pb2.ResumeJobScheduleResponse(schedule=schedule_to_proto(row))

    async def DeleteJobSchedule(
        self, request: job_pb2.DeleteJobScheduleRequest, context: Any
    ) -> job_pb2.DeleteJobScheduleResponse:
        who = require_user()
        await self.rt.run(jobs.delete_schedule, self.rt, who, _schedule_id(request.name))
        return job_pb2.DeleteJobScheduleResponse()
