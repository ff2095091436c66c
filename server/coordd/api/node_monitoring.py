"""NodeService's monitoring RPCs (issue 14), mixed into the servicer (api/node.py): uptime
windows, incident acknowledgement, silences and the monitoring policy. The rules are
domain/node/ (uptime, escalation, silences, flapping, alerts)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from coordd.api.convert import duration, from_ts, parse_name, ts
from coordd.api.node_convert import incident_to_proto, mask_paths
from coordd.core.errors import FieldViolation, InvalidArgument
from coordd.core.paging import PageRequest
from coordd.core.principal import require_user
from coordd.domain import node
from coordd.runtime import Runtime
from coordd_client.v1 import node_pb2

POLICY_SUFFIX = "/monitoringPolicy"
POLICY_PATHS = {
    "flap_changes",
    "flap_window",
    "flap_settle",
    "escalate_after",
    "escalation_channel",
    "repeat_every",
}


def uptime_to_proto(w: node.Uptime) -> node_pb2.UptimeWindow:
    return node_pb2.UptimeWindow(
        window=duration(w.window_s),
        uptime_percent=w.percent,
        up=duration(w.up_s),
        observed=duration(w.observed_s),
        label=w.label,
        start_time=ts(w.start),
        end_time=ts(w.end),
        down=duration(w.down_s),
        maintenance=duration(w.maintenance_s),
        mass_outage=duration(w.mass_outage_s),
    )


def policy_to_proto(project_id: str, p: node.MonitoringPolicy) -> node_pb2.MonitoringPolicy:
    return node_pb2.MonitoringPolicy(
        name=f"projects/{project_id}{POLICY_SUFFIX}",
        flap_changes=p.flap_changes,
        flap_window=duration(p.flap_window_s),
        flap_settle=duration(p.flap_settle_s),
        escalate_after=duration(p.escalate_after_s),
        escalation_channel=f"channels/{p.escalation_channel}" if p.escalation_channel else "",
        repeat_every=duration(p.repeat_every_s),
    )


def _seconds(value: Any) -> float:
    return value.ToTimedelta().total_seconds()


def policy_changes(message: node_pb2.MonitoringPolicy, paths: set[str]) -> dict[str, object]:
    """The fields to change; unset flapping fields mean their defaults."""
    d = node.MonitoringPolicy()
    values: dict[str, object] = {
        "flap_changes": message.flap_changes or d.flap_changes,
        "flap_window_s": _seconds(message.flap_window)
        if message.HasField("flap_window")
        else d.flap_window_s,
        "flap_settle_s": _seconds(message.flap_settle)
        if message.HasField("flap_settle")
        else d.flap_settle_s,
        "escalate_after_s": _seconds(message.escalate_after),
        "escalation_channel": (
            parse_name(message.escalation_channel, "channels", "monitoring_policy.escalation_channel")
            if message.escalation_channel
            else ""
        ),
        "repeat_every_s": _seconds(message.repeat_every),
    }
    by_path = {
        "flap_changes": "flap_changes",
        "flap_window": "flap_window_s",
        "flap_settle": "flap_settle_s",
        "escalate_after": "escalate_after_s",
        "escalation_channel": "escalation_channel",
        "repeat_every": "repeat_every_s",
    }
    return {by_path[p]: values[by_path[p]] for p in paths}


def policy_project(name: str, field: str) -> str:
    if not name.endswith(POLICY_SUFFIX):
        raise InvalidArgument(
            f"{field} must look like projects/{{id}}{POLICY_SUFFIX}",
            violations=[FieldViolation(field, f"expected projects/{{id}}{POLICY_SUFFIX}")],
        )
    return parse_name(name[: -len(POLICY_SUFFIX)], "projects", field)


def silence_to_proto(s: node.Silence, now: datetime) -> node_pb2.Silence:
    return node_pb2.Silence(
        name=f"silences/{s.id}",
        project=f"projects/{s.project_id}",
        node=f"nodes/{s.node_id}" if s.node_id else "",
        label_key=s.label_key,
        label_value=s.label_value,
        start_time=ts(s.start_time),
        end_time=ts(s.end_time),
        reason=s.reason,
        created_by=f"users/{s.created_by_id}",
        create_time=ts(s.create_time),
        active=s.start_time <= now < s.end_time,
    )


def sla_row_to_proto(r: node.SlaRow) -> node_pb2.SlaRow:
    return node_pb2.SlaRow(
        node=f"nodes/{r.node_id}" if r.node_id else "",
        display_name=r.display_name,
        uptime=uptime_to_proto(r.uptime),
        incidents=r.incidents,
    )


class MonitoringRpcs:
    """The monitoring half of NodeServicer (`self.rt` is the servicer's runtime)."""

    rt: Runtime

    async def AcknowledgeIncident(
        self, request: node_pb2.AcknowledgeIncidentRequest, context: Any
    ) -> node_pb2.AcknowledgeIncidentResponse:
        who = require_user()
        incident = await self.rt.run(
            node.acknowledge_incident, self.rt, who, parse_name(request.name, "incidents")
        )
        return node_pb2.AcknowledgeIncidentResponse(incident=incident_to_proto(incident, self.rt.now()))

    async def GetMonitoringPolicy(
        self, request: node_pb2.GetMonitoringPolicyRequest, context: Any
    ) -> node_pb2.GetMonitoringPolicyResponse:
        who = require_user()
        project_id = policy_project(request.name, "name")
        policy = await self.rt.run(node.get_monitoring_policy, who, project_id)
        return node_pb2.GetMonitoringPolicyResponse(monitoring_policy=policy_to_proto(project_id, policy))

    async def UpdateMonitoringPolicy(
        self, request: node_pb2.UpdateMonitoringPolicyRequest, context: Any
    ) -> node_pb2.UpdateMonitoringPolicyResponse:
        who = require_user()
        project_id = policy_project(request.monitoring_policy.name, "monitoring_policy.name")
        paths = mask_paths(request.update_mask, POLICY_PATHS) if request.update_mask.paths else POLICY_PATHS
        changes = policy_changes(request.monitoring_policy, paths)
        policy = await self.rt.run(node.update_monitoring_policy, self.rt, who, project_id, changes)
        return node_pb2.UpdateMonitoringPolicyResponse(monitoring_policy=policy_to_proto(project_id, policy))

    async def CreateSilence(
        self, request: node_pb2.CreateSilenceRequest, context: Any
    ) -> node_pb2.CreateSilenceResponse:
        who = require_user()
        project_id = parse_name(request.parent, "projects", "parent")
        s = request.silence
        node_id = parse_name(s.node, "nodes", "silence.node") if s.node else ""
        start = from_ts(s.start_time) if s.HasField("start_time") else None
        if request.HasField("duration"):
            end = (start or self.rt.now()) + timedelta(seconds=_seconds(request.duration))
        elif s.HasField("end_time"):
            end = from_ts(s.end_time)
        else:
            raise InvalidArgument(
                "a silence needs an end", violations=[FieldViolation("silence.end_time", "or duration")]
            )
        silence = await self.rt.run(
            node.create_silence,
            self.rt,
            who,
            project_id,
            node_id,
            s.label_key,
            s.label_value,
            start,
            end,
            s.reason,
        )
        return node_pb2.CreateSilenceResponse(silence=silence_to_proto(silence, self.rt.now()))

    async def ListSilences(
        self, request: node_pb2.ListSilencesRequest, context: Any
    ) -> node_pb2.ListSilencesResponse:
        who = require_user()
        project_id = parse_name(request.parent, "projects", "parent")
        page = await self.rt.run(
            node.list_silences, who, project_id, PageRequest.of(request.page_size, request.page_token)
        )
        now = self.rt.now()
        return node_pb2.ListSilencesResponse(
            silences=[silence_to_proto(s, now) for s in page.items], next_page_token=page.next_token
        )

    async def EndSilence(
        self, request: node_pb2.EndSilenceRequest, context: Any
    ) -> node_pb2.EndSilenceResponse:
        who = require_user()
        silence = await self.rt.run(node.end_silence, self.rt, who, parse_name(request.name, "silences"))
        return node_pb2.EndSilenceResponse(silence=silence_to_proto(silence, self.rt.now()))

    async def StreamSlaReport(
        self, request: node_pb2.StreamSlaReportRequest, context: Any
    ) -> AsyncIterator[node_pb2.StreamSlaReportResponse]:
        who = require_user()
        project_id = parse_name(request.parent, "projects", "parent")
        start = from_ts(request.start_time) if request.HasField("start_time") else None
        end = from_ts(request.end_time) if request.HasField("end_time") else None
        await self.rt.run(node.sla_check_access, who, project_id)
        first, last = node.sla_period(self.rt, request.month, start, end)
        label = request.month or "range"
        rows: list[node.SlaRow] = []
        after = ""
        while True:
            page = await self.rt.run(node.sla_page_rows, project_id, first, last, after, label)
            if not page:
                break
            rows.extend(page)
            after = page[-1].node_id
            yield node_pb2.StreamSlaReportResponse(
                rows=[sla_row_to_proto(r) for r in page],
                csv=node.sla_csv(page, header=len(rows) == len(page)) if request.csv else "",
            )
        total = node.sla_aggregate(rows, first, last, label)
        yield node_pb2.StreamSlaReportResponse(
            aggregate=sla_row_to_proto(total),
            csv=node.sla_csv([total], header=not rows) if request.csv else "",
        )
