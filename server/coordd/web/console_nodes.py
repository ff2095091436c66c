"""Node incidents and silences in the operator console: a project's incidents (open ones
first) with Acknowledge, and its silences with a form to create one (the whole project, one
node, or the nodes with a label; a duration and a reason) and End.

Each page or action stands for its NodeService method and needs that method's roles
(session.require_role / check_post: node_operator); the domain functions the gRPC API calls
then apply their own rules (an operator acknowledges and silences their own nodes, the
project's owner anything in it; an admin anything). Every POST carries the CSRF token and is
recorded in the audit log as `web.action` with the method and the resource.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from aiohttp import web

import coordd.web.session as session
from coordd.core.errors import FieldViolation, InvalidArgument, NotFound, PermissionDenied
from coordd.core.paging import PageRequest
from coordd.domain import node
from coordd.domain.auth import audit
from coordd_client.v1 import node_pb2  # noqa: F401 - NodeService's descriptors, for its policies

ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
LIST_INCIDENTS = "coordd.v1.NodeService.ListIncidents"
ACKNOWLEDGE = "coordd.v1.NodeService.AcknowledgeIncident"
LIST_SILENCES = "coordd.v1.NodeService.ListSilences"
CREATE_SILENCE = "coordd.v1.NodeService.CreateSilence"
END_SILENCE = "coordd.v1.NodeService.EndSilence"


def add_routes(ws: Any) -> None:
    c = NodeConsole(ws)
    r = ws.app.router
    r.add_get("/console/projects/{project}/alerts", c.alerts_page)
    r.add_post("/console/incidents/{incident}/acknowledge", c.acknowledge)
    r.add_post("/console/projects/{project}/silences", c.create_silence)
    r.add_post("/console/silences/{silence}/end", c.end_silence)


def _id(request: web.Request, key: str) -> str:
    value = request.match_info[key]
    if not ID.match(value):
        raise NotFound(f"{key}s/{value[:64]} not found")
    return value


def read_alerts(who: Any, project_id: str) -> tuple[Any, list[Any], list[Any], list[Any] | None, bool]:
    """Blocking (rt.run): the project, its visible nodes with their incidents (as
    ListIncidents shows them), and its silences (None when only the owner may list them)."""
    project = node.get_project(project_id)
    nodes = node.list_nodes(who, project_id, "", "", "", PageRequest.of(1000, "")).items
    incidents = []
    for n in sorted(nodes, key=lambda n: n.display_name):
        for i in node.list_incidents(who, "nodes", n.id, False, PageRequest.of(50, "")).items:
            incidents.append((n, i))
    incidents.sort(key=lambda pair: (pair[1].end_time is not None, -pair[1].start_time.timestamp()))
    try:
        silences: list[Any] | None = node.list_silences(who, project_id, PageRequest.of(100, "")).items
    except PermissionDenied:  # a member operator: only the owner (or an admin) lists silences
        silences = None
    return project, nodes, incidents, silences, silences is not None


class NodeConsole:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.rt = ws.rt

    async def alerts_page(self, request: web.Request) -> web.StreamResponse:
        me = await session.require_viewer(request, self.rt)
        await session.require_role(request, self.rt, me.principal, LIST_INCIDENTS)
        pid = _id(request, "project")
        project, nodes, incidents, silences, owner = await self.rt.run(read_alerts, me.principal, pid)
        who = me.principal
        response = self.ws.page(
            "console_alerts.html",
            request,
            project=project,
            nodes=nodes,
            incidents=incidents,
            silences=silences,
            owner=owner,
            now=self.rt.now(),
            may_ack=session.may(who, ACKNOWLEDGE),
            may_silence=session.may(who, CREATE_SILENCE),
            may_end=session.may(who, END_SILENCE),
            done=request.query.get("done", ""),
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _audit(self, request: web.Request, who: Any, method: str, target: str) -> None:
        peer = session.peer_of(request)
        await self.rt.run(audit.record_by, self.rt, who, "web.action", target, peer, method=method)

    async def acknowledge(self, request: web.Request) -> web.StreamResponse:
        me, _ = await session.check_post(request, self.rt, ACKNOWLEDGE)
        iid = _id(request, "incident")
        incident = await self.rt.run(node.acknowledge_incident, self.rt, me.principal, iid)
        await self._audit(request, me.principal, ACKNOWLEDGE, f"incidents/{iid}")
        raise web.HTTPSeeOther(f"/console/projects/{incident.project_id}/alerts?done=acknowledged")

    async def create_silence(self, request: web.Request) -> web.StreamResponse:
        me, form = await session.check_post(request, self.rt, CREATE_SILENCE)
        pid = _id(request, "project")
        target = form.get("target", "")
        node_id, label_key, label_value = "", "", ""
        if target.startswith("nodes/"):
            node_id = target.removeprefix("nodes/")[:64]
        elif target == "label":
            label_key, _, label_value = form.get("label", "").partition("=")
            label_key, label_value = label_key.strip()[:64], label_value.strip()
            if not label_key:
                raise InvalidArgument(
                    "a label silence needs key=value", violations=[FieldViolation("label", "key=value")]
                )
        try:
            minutes = float(form.get("minutes", ""))
        except ValueError:
            minutes = 0.0
        if not 0 < minutes <= 30 * 24 * 60:
            raise InvalidArgument(
                "the duration is 1 minute to 30 days", violations=[FieldViolation("minutes", "1 to 43200")]
            )
        end = self.rt.now() + timedelta(minutes=minutes)
        silence = await self.rt.run(
            node.create_silence,
            self.rt,
            me.principal,
            pid,
            node_id,
            label_key,
            label_value,
            None,
            end,
            form.get("reason", ""),
        )
        await self._audit(request, me.principal, CREATE_SILENCE, f"silences/{silence.id}")
        raise web.HTTPSeeOther(f"/console/projects/{pid}/alerts?done=silenced")

    async def end_silence(self, request: web.Request) -> web.StreamResponse:
        me, _ = await session.check_post(request, self.rt, END_SILENCE)
        sid = _id(request, "silence")
        silence = await self.rt.run(node.end_silence, self.rt, me.principal, sid)
        await self._audit(request, me.principal, END_SILENCE, f"silences/{sid}")
        raise web.HTTPSeeOther(f"/console/projects/{silence.project_id}/alerts?done=silence+ended")
