"""Public project status pages and competition pages.

A project's status page is opt-in by its owner: only a project whose `public_status` is set
(UpdateProject, `coordctl project update --public-status true`) has one; anything else is
NOT_FOUND, worded as for a project that does not exist, so the page does not reveal it.
It shows each node's status (UP / DOWN / MAINTENANCE ...), 90 daily uptime bars
(maintenance excluded, as the uptime figures of the gRPC API exclude it) and incidents with
their durations. Node reads in the node
domain are checked against an owner or an admin; for a listed project the page reads them as
STATUS_READER, an admin principal that exists only inside this module and only reads.

A competition page shows what GetCompetition shows an anonymous caller (drafts are NOT_FOUND):
seats left, waitlist length, the registration deadline, and, once published, the results with
their signature.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from coordd.core.errors import NotFound
from coordd.core.paging import PageRequest
from coordd.core.principal import ADMIN, ANONYMOUS, Principal
from coordd.domain import competition, node
from coordd.domain.node import uptime
from coordd.web.render import iso
from coordd.web.responses import json_response

ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DAYS = 90
STATUS_READER = Principal(user_id="", roles=frozenset({ADMIN}), kind="token")


@dataclass(frozen=True)
class NodeStatus:
    node: node.Node
    # One entry per day, oldest first: share of observed time UP (None: nothing observed).
    days: list[float | None]
    incidents: list[node.Incident]

    @property
    def uptime(self) -> float | None:
        seen = [d for d in self.days if d is not None]
        return None if not seen else sum(seen) / len(seen)


def _daily(segs: list[uptime.Segment], holes: list[Any], start: datetime, days: int) -> list[float | None]:
    out: list[float | None] = []
    for i in range(days):
        lo, hi = start + timedelta(days=i), start + timedelta(days=i + 1)
        clipped = [
            uptime.Segment(max(s.start, lo), min(s.end, hi), s.status, s.excluded)
            for s in segs
            if s.end > lo and s.start < hi
        ]
        up, observed, _ = uptime.measure(clipped, holes)
        out.append(None if observed <= 0 else up / observed)
    return out


def read_fleet(who: Principal, project: node.Project, now: datetime) -> list[NodeStatus]:
    """Blocking (rt.run): the project's nodes `who` may see (as ListNodes shows them), with
    their daily uptime and latest incidents (as ListIncidents shows them)."""
    start = now - timedelta(days=DAYS)
    visible = node.list_nodes(who, project.id, "", "", "", PageRequest.of(1000, "")).items
    out = []
    for n in sorted(visible, key=lambda n: n.display_name):
        segs = uptime.segments(n.id, start, now)
        holes = uptime.maintenance_intervals(project.id, n.id, start, now)
        incidents = node.list_incidents(who, "nodes", n.id, False, PageRequest.of(20, "")).items
        out.append(NodeStatus(n, _daily(segs, holes, start, DAYS), incidents))
    return out


def read_status(project_id: str, now: datetime) -> tuple[node.Project, list[NodeStatus]]:
    """Blocking (rt.run). A project whose owner has not opted in is NOT_FOUND, like one that
    does not exist (same message, same status)."""
    try:
        project = node.get_project(project_id)
    except NotFound:
        project = None
    if project is None or not project.public_status:
        raise NotFound(f"projects/{project_id} has no public status page")
    return project, read_fleet(STATUS_READER, project, now)


def add_routes(ws: Any) -> None:
    pages = PublicPages(ws)
    r = ws.app.router
    r.add_get("/status/{project}", pages.status_page)
    r.add_get("/api/status/{project}", pages.status_json)
    r.add_get("/competitions/{competition}", pages.competition_page)
    r.add_get("/api/competitions/{competition}", pages.competition_json)


def _duration_s(i: node.Incident, now: datetime) -> float:
    return ((i.end_time or now) - i.start_time).total_seconds()


class PublicPages:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.rt = ws.rt

    async def _status(self, request: web.Request) -> tuple[node.Project, list[NodeStatus]]:
        pid = request.match_info["project"]
        if not ID.match(pid):
            raise NotFound(f"projects/{pid[:64]} has no public status page")
        return await self.rt.run(read_status, pid, self.rt.now())

    async def status_page(self, request: web.Request) -> web.StreamResponse:
        project, nodes = await self._status(request)
        return self.ws.page(
            "status.html", request, project=project, nodes=nodes, now=self.rt.now(), days=DAYS
        )

    async def status_json(self, request: web.Request) -> web.StreamResponse:
        project, nodes = await self._status(request)
        now = self.rt.now()
        return json_response(
            {
                "name": f"projects/{project.id}",
                "display_name": project.display_name,
                "nodes": [
                    {
                        "name": f"nodes/{s.node.id}",
                        "display_name": s.node.display_name,
                        "region": s.node.region,
                        "status": s.node.status.upper(),
                        "status_time": iso(s.node.status_time),
                        "uptime_90d": s.uptime,
                        "daily_uptime": s.days,
                        "incidents": [
                            {
                                "start_time": iso(i.start_time),
                                "end_time": iso(i.end_time),
                                "duration_seconds": _duration_s(i, now),
                                "cause": i.cause,
                                "open": i.end_time is None,
                            }
                            for i in s.incidents
                        ],
                    }
                    for s in nodes
                ],
            }
        )

    async def _competition(self, request: web.Request) -> tuple[Any, Any]:
        cid = request.match_info["competition"]
        if not ID.match(cid):
            raise NotFound(f"competitions/{cid[:64]} not found")
        view = await self.rt.run(competition.get_competition, ANONYMOUS, cid)
        results = None
        if view.competition.results_payload is not None:
            results = await self.rt.run(competition.get_results, self.rt, ANONYMOUS, cid)
        return view.competition, results

    async def competition_page(self, request: web.Request) -> web.StreamResponse:
        comp, results = await self._competition(request)
        return self.ws.page(
            "competition.html", request, c=comp, results=results, seats_left=_seats_left(comp)
        )

    async def competition_json(self, request: web.Request) -> web.StreamResponse:
        comp, results = await self._competition(request)
        doc: dict[str, Any] = {
            "name": f"competitions/{comp.id}",
            "title": comp.title,
            "description": comp.description,
            "state": comp.state,
            "capacity": comp.capacity,
            "seats_left": _seats_left(comp),
            "waitlist_length": comp.waitlisted,
            "registration_deadline": iso(comp.close_time),
            "start_time": iso(comp.start_time),
            "end_time": iso(comp.end_time),
            "results": None,
        }
        if results is not None:
            doc["results"] = {
                "payload": base64.b64encode(results.payload).decode(),
                "signature": base64.b64encode(results.signature).decode(),
                "key_id": results.key_id,
                "public_key": base64.b64encode(results.public_key).decode(),
            }
        return json_response(doc)


def _seats_left(comp: Any) -> int:
    return max(0, comp.capacity - comp.confirmed - comp.offered)
