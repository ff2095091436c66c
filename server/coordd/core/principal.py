"""Who is calling, and the role rules every domain shares."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from coordd.core.errors import PermissionDenied, Unauthenticated

ADMIN = "admin"
ORGANIZER = "organizer"
COORDINATOR = "coordinator"
PARTICIPANT = "participant"
PROVIDER = "provider"
NODE_OPERATOR = "node_operator"

ALL_ROLES = (ADMIN, ORGANIZER, COORDINATOR, PARTICIPANT, PROVIDER, NODE_OPERATOR)
SELF_SERVICE_ROLES = frozenset({PARTICIPANT, ORGANIZER, PROVIDER, NODE_OPERATOR})

# Credential kinds. A node key is an API key linked to a node: it may only make the calls
# a node agent makes (the `node_agent` policy); the AuthInterceptor enforces it.
TOKEN = "token"
API_KEY = "api_key"
NODE_KEY = "node_key"


@dataclass(frozen=True)
class Principal:
    user_id: str
    roles: frozenset[str]
    kind: str  # token | api_key | node_key | anonymous
    api_key_id: str = ""
    # A scoped API key's services and methods (`coordd.v1.JobService`,
    # `coordd.v1.JobService.GetJob`); empty: unscoped.
    scopes: frozenset[str] = frozenset()

    @property
    def is_anonymous(self) -> bool:
        return self.kind == "anonymous"

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.roles

    def has_any(self, roles: frozenset[str] | set[str]) -> bool:
        return self.is_admin or not roles or bool(self.roles & roles)

    @property
    def scope(self) -> str:
        """Idempotency keys are scoped per user, so two callers never collide."""
        return self.user_id or "anonymous"


ANONYMOUS = Principal(user_id="", roles=frozenset(), kind="anonymous")

current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "coordd_principal", default=ANONYMOUS
)


def caller() -> Principal:
    return current_principal.get()


def require_user() -> Principal:
    who = current_principal.get()
    if who.is_anonymous:
        raise Unauthenticated("this call needs a credential")
    return who


def require_owner_or_admin(who: Principal, owner_id: str, what: str) -> None:
    """Ownership is checked per resource: only its owner, or an admin, may act on it."""
    if who.user_id != owner_id and not who.is_admin:
        raise PermissionDenied(f"only the owner of this {what} or an admin may do that", reason="NOT_OWNER")


def parse_roles(text: str) -> frozenset[str]:
    return frozenset(r for r in text.split(",") if r)


def format_roles(roles: frozenset[str] | set[str] | list[str]) -> str:
    return ",".join(sorted(set(roles), key=ALL_ROLES.index))
