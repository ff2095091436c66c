"""Console sessions, CSRF tokens and the gRPC policies the console's actions follow.

A session is the access token `auth.login` issues (a coordd user's email and password), kept
in an HttpOnly, SameSite=Strict cookie (Secure when the request came over TLS) and checked on
every request with `auth.authenticate`, so a disabled user, a revoked token or a removed role
takes effect at once, as on the gRPC API. Nothing else is stored server-side.

Every state-changing request (POST) must carry `csrf_token`, equal to an HMAC of the session
token: a page from another origin cannot read the cookie, so it cannot compute it. Login has
its own token, bound to a random pre-login cookie. A POST whose Origin header names another
origin is refused as well.

Each console action names the gRPC method it stands for; the roles it needs are read from
that method's `(coordd.v1.policy)` option, so the console and the gRPC API cannot disagree.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from aiohttp import web
from google.protobuf import descriptor_pool

from coordd.core.errors import DomainError, PermissionDenied, Unauthenticated
from coordd.core.principal import Principal
from coordd.domain import auth
from coordd.domain.auth import audit
from coordd_client.v1 import (  # noqa: F401 - the services' descriptors, for their policies
    auth_pb2,
    ceremony_pb2,
    common_pb2,
    competition_pb2,
    job_pb2,
    options_pb2,
)

SESSION_COOKIE = "coordd_session"
LOGIN_COOKIE = "coordd_login"
_policies: dict[str, frozenset[str]] = {}


class Viewer:
    """The signed-in user as pages show them."""

    def __init__(self, principal: Principal, email: str) -> None:
        self.principal = principal
        self.email = email

    @property
    def label(self) -> str:
        roles = ", ".join(sorted(self.principal.roles))
        return f"{self.email} ({roles})"


# What a request learned about its session, for the templates (server.page) and the checks.
VIEWER = web.RequestKey("coordd_viewer", Viewer)
CSRF = web.RequestKey("coordd_csrf", str)


def csrf_for(secret: str) -> str:
    return hmac.new(secret.encode(), b"coordd.web.csrf.v1", hashlib.sha256).hexdigest()


def roles_for(method: str) -> frozenset[str]:
    """The roles `coordd.v1.JobService.RequeueJob` (say) needs; empty: any signed-in user."""
    roles = _policies.get(method)
    if roles is None:
        desc = descriptor_pool.Default().FindMethodByName(method)
        opts = desc.GetOptions().Extensions[options_pb2.policy]
        roles = frozenset(common_pb2.Role.Name(r)[5:].lower() for r in opts.roles)
        _policies[method] = roles
    return roles


def may(who: Principal, method: str) -> bool:
    return who.has_any(roles_for(method))


async def require_role(request: web.Request, rt: Any, who: Principal, method: str) -> None:
    """A console read that stands for `method` needs its roles too (refusals audited)."""
    if not may(who, method):
        await rt.run(audit.record_denial, rt, who, method, "ROLE_REQUIRED", peer_of(request))
        needed = ", ".join(sorted(roles_for(method)))
        raise PermissionDenied(f"this needs one of the roles: {needed}", reason="ROLE_REQUIRED")


def peer_of(request: web.Request) -> str:
    return f"http:{request.remote or ''}"


async def viewer(request: web.Request, rt: Any) -> Viewer | None:
    """The signed-in user, or None (no cookie, or a session no longer valid)."""
    token = request.cookies.get(SESSION_COOKIE, "")
    if not token:
        return None
    try:
        principal = await auth.authenticate(rt, token)
        user = await rt.run(auth.get_user, principal.user_id)
    except DomainError:
        return None
    request[CSRF] = csrf_for(token)
    request[VIEWER] = Viewer(principal, user.email)
    return request[VIEWER]


async def require_viewer(request: web.Request, rt: Any) -> Viewer:
    found = await viewer(request, rt)
    if found is None:
        raise web.HTTPSeeOther(f"/console/login?next={request.path}")
    return found


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:  # not every browser sends it on same-origin form posts
        return True
    return origin == f"{request.scheme}://{request.host}"


async def check_post(request: web.Request, rt: Any, method: str) -> tuple[Viewer, dict[str, str]]:
    """For an action: the viewer, its form, after the CSRF, origin and role checks. Refusals
    are audited (rpc.denied with the gRPC method the action stands for)."""
    form = {k: str(v) for k, v in (await request.post()).items()}
    found = await viewer(request, rt)
    if found is None:
        raise Unauthenticated("sign in to the console first", reason="NO_SESSION")
    who = found.principal
    sent = form.get("csrf_token", "")
    if not _same_origin(request) or not sent or not hmac.compare_digest(sent, request[CSRF]):
        await rt.run(audit.record_denial, rt, who, method, "CSRF", peer_of(request))
        raise PermissionDenied("the form's CSRF token is missing or wrong; reload the page", reason="CSRF")
    await require_role(request, rt, who, method)
    return found, form


def set_session(response: web.StreamResponse, request: web.Request, token: str, max_age: int) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


def clear_session(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path="/")


def login_nonce(request: web.Request) -> tuple[str, bool]:
    """The pre-login cookie's value (a new one when absent: set it with `set_login_nonce`)."""
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    return (nonce, False) if nonce else (secrets.token_urlsafe(24), True)


def set_login_nonce(response: web.StreamResponse, nonce: str) -> None:
    response.set_cookie(LOGIN_COOKIE, nonce, path="/console", httponly=True, samesite="Strict")
