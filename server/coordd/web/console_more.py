"""More of the operator console: a coordinator's ceremonies (participants, pause and resume),
an organizer's competition registrations, and the audit log for admins. The same rules as
console.py: each page or action stands for a gRPC method and needs its roles; the domain checks
ownership; actions are audited as `web.action`."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

import coordd.web.session as session
from coordd.core.errors import NotFound
from coordd.core.paging import PageRequest
from coordd.domain import auth, ceremony, competition, node
from coordd.domain.auth import audit
from coordd.web.pages import DAYS, read_fleet

ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
LIST_PARTICIPANTS = "coordd.v1.CeremonyService.ListParticipants"
PAUSE = "coordd.v1.CeremonyService.PauseCeremony"
RESUME = "coordd.v1.CeremonyService.ResumeCeremony"
LIST_REGISTRATIONS = "coordd.v1.CompetitionService.ListRegistrations"
LIST_AUDIT = "coordd.v1.AuthService.ListAuditEvents"
LIST_NODES = "coordd.v1.NodeService.ListNodes"
LIST_PROJECTS = "coordd.v1.NodeService.ListProjects"


def _id(request: web.Request, key: str) -> str:
    value = request.match_info[key]
    if not ID.match(value):
        raise NotFound(f"{key}s/{value[:64]} not found")
    return value


def add_routes(ws: Any) -> None:
    c = MoreConsole(ws)
    r = ws.app.router
    r.add_get("/console/ceremonies", c.ceremonies_page)
    r.add_get("/console/ceremonies/{ceremony}", c.ceremony_page)
    r.add_post("/console/ceremonies/{ceremony}/pause", c.pause)
    r.add_post("/console/ceremonies/{ceremony}/resume", c.resume)
    r.add_get("/console/competitions/{competition}", c.competition_page)
    r.add_get("/console/audit", c.audit_page)
    r.add_get("/console/projects", c.projects_page)
    r.add_get("/console/projects/{project}", c.project_page)


class MoreConsole:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.rt = ws.rt

    def _page(self, name: str, request: web.Request, **context: Any) -> web.StreamResponse:
        response = self.ws.page(name, request, **context)
        response.headers["Cache-Control"] = "no-store"
        return response

    async def ceremonies_page(self, request: web.Request) -> web.StreamResponse:
        await session.require_viewer(request, self.rt)
        page = await self.rt.run(
            ceremony.list_ceremonies, PageRequest.of(100, request.query.get("page_token", "")), ""
        )
        return self._page(
            "console_ceremonies.html", request, ceremonies=page.items, next_token=page.next_token
        )

    async def ceremony_page(self, request: web.Request) -> web.StreamResponse:
        me = await session.require_viewer(request, self.rt)
        await session.require_role(request, self.rt, me.principal, LIST_PARTICIPANTS)
        cid = _id(request, "ceremony")
        status = request.query.get("status", "")
        page = await self.rt.run(
            ceremony.list_participants,
            me.principal,
            cid,
            PageRequest.of(100, request.query.get("page_token", "")),
            status if status.isalpha() else "",
        )
        c = await self.rt.run(ceremony.get_ceremony, cid)
        return self._page(
            "console_ceremony.html",
            request,
            c=c,
            participants=page.items,
            next_token=page.next_token,
            may_pause=session.may(me.principal, PAUSE) and c.state == ceremony.states.OPENED,
            may_resume=session.may(me.principal, RESUME) and c.state == ceremony.states.PAUSED,
            done=request.query.get("done", ""),
        )

    async def _change(self, request: web.Request, method: str, fn: Any, done: str) -> web.StreamResponse:
        me, _ = await session.check_post(request, self.rt, method)
        cid = _id(request, "ceremony")
        await self.rt.run(fn, self.rt, me.principal, cid)
        target = ceremony.ceremony_name(cid)
        peer = session.peer_of(request)
        await self.rt.run(audit.record_by, self.rt, me.principal, "web.action", target, peer, method=method)
        raise web.HTTPSeeOther(f"/console/ceremonies/{cid}?done={done}")

    async def pause(self, request: web.Request) -> web.StreamResponse:
        return await self._change(request, PAUSE, ceremony.pause_ceremony, "paused")

    async def resume(self, request: web.Request) -> web.StreamResponse:
        return await self._change(request, RESUME, ceremony.resume_ceremony, "resumed")

    async def competition_page(self, request: web.Request) -> web.StreamResponse:
        me = await session.require_viewer(request, self.rt)
        await session.require_role(request, self.rt, me.principal, LIST_REGISTRATIONS)
        cid = _id(request, "competition")
        state = request.query.get("state", "")
        view = await self.rt.run(competition.get_competition, me.principal, cid)
        page = await self.rt.run(
            competition.list_registrations,
            me.principal,
            cid,
            PageRequest.of(100, request.query.get("page_token", "")),
            state if state.replace("_", "").isalpha() else "",
        )
        return self._page(
            "console_competition.html",
            request,
            c=view.competition,
            regs=page.items,
            next_token=page.next_token,
        )

    async def audit_page(self, request: web.Request) -> web.StreamResponse:
        me = await session.require_viewer(request, self.rt)
        await session.require_role(request, self.rt, me.principal, LIST_AUDIT)
        text = request.query.get("filter", "")[:500]
        page = await self.rt.run(
            auth.list_audit_events, PageRequest.of(100, request.query.get("page_token", "")), text
        )
        return self._page(
            "console_audit.html", request, rows=page.items, filter=text, next_token=page.next_token
        )

    async def projects_page(self, request: web.Request) -> web.StreamResponse:
        me = await session.require_viewer(request, self.rt)
        await session.require_role(request, self.rt, me.principal, LIST_PROJECTS)
        page = await self.rt.run(node.list_projects, PageRequest.of(100, request.query.get("page_token", "")))
        return self._page("console_projects.html", request, projects=page.items, next_token=page.next_token)

    async def project_page(self, request: web.Request) -> web.StreamResponse:
        """A fleet as its operators see it: every node they may see, with incidents (open ones
        first in the list, as ListIncidents orders them), whether or not the project is public."""
        me = await session.require_viewer(request, self.rt)
        await session.require_role(request, self.rt, me.principal, LIST_NODES)
        pid = _id(request, "project")
        project = await self.rt.run(node.get_project, pid)
        nodes = await self.rt.run(read_fleet, me.principal, project, self.rt.now())
        return self._page("status.html", request, project=project, nodes=nodes, now=self.rt.now(), days=DAYS)
