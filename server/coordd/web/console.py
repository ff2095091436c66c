"""The operator console: sign in with a coordd user, jobs by state with their attempts and
attestation, and the actions retry (requeue a failed job) and cancel.

Reads go through the same domain functions as the gRPC API with the signed-in principal, so
a user sees exactly what ListJobs / GetJob would show them (their own jobs; an admin sees any
job, and others' lists by submitter). Each action names its gRPC method and passes the same
role check (session.check_post); the domain then applies its own rules (owner or admin, state).
Every action is recorded in the audit log (`web.action`, with the method and the job), every
refusal as `rpc.denied`.
"""

from __future__ import annotations

import hmac
import re
from typing import Any
from urllib.parse import quote

from aiohttp import web

import coordd.web.session as session
from coordd.core.errors import FailedPrecondition, NotFound, Unauthenticated
from coordd.core.paging import PageRequest
from coordd.domain import auth, jobs
from coordd.domain.auth import audit
from coordd.web.render import iso
from coordd.web.responses import json_response

ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
REQUEUE = "coordd.v1.JobService.RequeueJob"
CANCEL = "coordd.v1.JobService.CancelJob"
STATES = (jobs.QUEUED, jobs.RUNNING, jobs.SUCCEEDED, jobs.FAILED, jobs.CANCELLED)
WEB_ACTION = "web.action"


def add_routes(ws: Any) -> None:
    c = Console(ws)
    r = ws.app.router
    r.add_get("/console", c.home)
    r.add_get("/console/login", c.login_page)
    r.add_post("/console/login", c.login)
    r.add_post("/console/logout", c.logout)
    r.add_get("/console/jobs", c.jobs_page)
    r.add_get("/api/console/jobs", c.jobs_json)
    r.add_get("/console/jobs/{job}", c.job_page)
    r.add_post("/console/jobs/{job}/requeue", c.requeue)
    r.add_post("/console/jobs/{job}/cancel", c.cancel)


def _job_id(request: web.Request) -> str:
    jid = request.match_info["job"]
    if not ID.match(jid):
        raise NotFound(f"jobs/{jid[:64]} not found")
    return jid


def _no_store(response: web.StreamResponse) -> web.StreamResponse:
    response.headers["Cache-Control"] = "no-store"
    return response


def job_doc(j: jobs.Job) -> dict[str, Any]:
    return {
        "name": f"jobs/{j.id}",
        "state": j.state,
        "kind": j.kind,
        "model_ref": j.model_ref,
        "submitter": f"users/{j.submitter}",
        "provider": f"users/{j.provider}" if j.provider else "",
        "attempt": j.attempt,
        "priority": j.priority,
        "error": j.error,
        "create_time": iso(j.create_time),
        "finish_time": iso(j.finish_time),
    }


class Console:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.rt = ws.rt

    async def home(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/console/jobs")

    # -- sign in and out -------------------------------------------------------------------

    def _login_form(self, request: web.Request, status: int = 200, error: str = "") -> web.StreamResponse:
        nonce, new = session.login_nonce(request)
        nxt = request.query.get("next", "")
        response = self.ws.page(
            "login.html", request, status=status, login_csrf=session.csrf_for(nonce), error=error, next=nxt
        )
        if new:
            session.set_login_nonce(response, nonce)
        return _no_store(response)

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        if await session.viewer(request, self.rt) is not None:
            raise web.HTTPSeeOther("/console/jobs")
        return self._login_form(request)

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        nonce = request.cookies.get(session.LOGIN_COOKIE, "")
        sent = str(form.get("csrf_token", ""))
        if not nonce or not sent or sent != session.csrf_for(nonce):
            return self._login_form(request, 403, "The form expired; please sign in again.")
        try:
            signed_in = await auth.login(
                self.rt, str(form.get("email", "")), str(form.get("password", "")), session.peer_of(request)
            )
        except Unauthenticated:
            return self._login_form(request, 401, "Wrong email or password.")
        nxt = str(form.get("next", ""))
        target = nxt if nxt.startswith("/console/") and "//" not in nxt else "/console/jobs"
        response = web.Response(status=303, headers={"Location": target})
        max_age = max(1, int((signed_in.expire_time - self.rt.now()).total_seconds()))
        session.set_session(response, request, signed_in.access_token, max_age)
        response.del_cookie(session.LOGIN_COOKIE, path="/console")
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        found = await session.viewer(request, self.rt)
        response = web.Response(status=303, headers={"Location": "/ceremonies"})
        if found is not None and hmac.compare_digest(str(form.get("csrf_token", "")), request[session.CSRF]):
            session.clear_session(response)
        return response

    # -- jobs ------------------------------------------------------------------------------

    async def _jobs(self, request: web.Request, who: Any) -> tuple[Any, dict[str, str]]:
        q = request.query
        filters = {
            "state": q.get("state", "") if q.get("state", "") in STATES else "",
            "kind": q.get("kind", "") if q.get("kind", "") in jobs.KINDS else "",
            "submitter": q.get("submitter", "").removeprefix("users/")[:64],
        }
        page = await self.rt.run(
            jobs.list_jobs,
            self.rt,
            who,
            PageRequest.of(50, q.get("page_token", "")),
            filters["state"],
            filters["kind"],
            filters["submitter"],
        )
        return page, filters

    async def jobs_page(self, request: web.Request) -> web.StreamResponse:
        me = await session.require_viewer(request, self.rt)
        page, filters = await self._jobs(request, me.principal)
        stats = await self.rt.run(jobs.queue_stats, self.rt, 3600.0)
        return _no_store(
            self.ws.page(
                "console_jobs.html",
                request,
                page=page,
                filters=filters,
                states=STATES,
                kinds=jobs.KINDS,
                stats=stats,
                next_query=quote(page.next_token),
            )
        )

    async def jobs_json(self, request: web.Request) -> web.StreamResponse:
        me = await session.viewer(request, self.rt)
        if me is None:
            raise Unauthenticated("sign in to the console first", reason="NO_SESSION")
        page, _ = await self._jobs(request, me.principal)
        return _no_store(
            json_response({"jobs": [job_doc(v.job) for v in page.items], "next_page_token": page.next_token})
        )

    async def job_page(self, request: web.Request) -> web.StreamResponse:
        me = await session.require_viewer(request, self.rt)
        jid = _job_id(request)
        view = await self.rt.run(jobs.get_job, me.principal, jid, False)
        attestation = None
        if view.job.state == jobs.SUCCEEDED:
            try:
                attestation = await self.rt.run(jobs.get_attestation, me.principal, jid)
            except FailedPrecondition:
                attestation = None
        who = me.principal
        return _no_store(
            self.ws.page(
                "console_job.html",
                request,
                view=view,
                j=view.job,
                attestation=attestation,
                may_requeue=session.may(who, REQUEUE) and view.job.state == jobs.FAILED,
                may_cancel=session.may(who, CANCEL) and view.job.state in (jobs.QUEUED, jobs.RUNNING),
                done=request.query.get("done", ""),
            )
        )

    async def _audit(self, request: web.Request, who: Any, method: str, jid: str) -> None:
        await self.rt.run(
            audit.record_by, self.rt, who, WEB_ACTION, f"jobs/{jid}", session.peer_of(request), method=method
        )

    async def requeue(self, request: web.Request) -> web.StreamResponse:
        """Retry a failed job: RequeueJob (admins), a fresh set of attempts."""
        me, _ = await session.check_post(request, self.rt, REQUEUE)
        jid = _job_id(request)
        await self.rt.run(jobs.requeue, self.rt, me.principal, jid)
        await self._audit(request, me.principal, REQUEUE, jid)
        raise web.HTTPSeeOther(f"/console/jobs/{jid}?done=requeued")

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        me, form = await session.check_post(request, self.rt, CANCEL)
        jid = _job_id(request)
        reason = form.get("reason", "")[:500] or "cancelled from the console"
        await self.rt.run(jobs.cancel, self.rt, me.principal, jid, reason)
        await self._audit(request, me.principal, CANCEL, jid)
        raise web.HTTPSeeOther(f"/console/jobs/{jid}?done=cancelled")
