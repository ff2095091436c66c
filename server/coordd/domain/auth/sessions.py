"""Which users' credentials are limited now: disabled users, revoked tokens, changed roles.

Access tokens are verified without a database round trip, so a change to a user's access
must reach every call some other way. Each replica keeps, in memory, the users whose
access was ever changed (`user.auth_change_time` is set): disabled or not, their revocation
epoch and their roles now. A call checks its principal against that map (a dict lookup):

- a disabled user's tokens and API keys are refused (ACCOUNT_DISABLED);
- a token issued under an older epoch is refused (TOKEN_REVOKED): revoking a user's
  tokens, changing their roles or password bumps the epoch;
- an API key never carries more than its owner's roles now.

A change made on this replica updates the map when it commits; other replicas hear of it
through the event bus (`auth.user.access`), and every replica also re-reads the users
changed since its last look every REFRESH_S seconds (an indexed query), so a lost event
delays a revocation by at most that long.

The same map answers "who am I" without a database read (`current_user`): a user's email,
display name and creation time never change once the account exists, so each replica keeps
them after the first read, and takes the roles and disabled flag from the access map (which
holds every user whose access ever changed) when the user is in it, else from that read.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import structlog

from coordd.core.errors import NotFound
from coordd.core.events import Event
from coordd.core.memo import remember
from coordd.core.principal import format_roles, parse_roles
from coordd.domain.auth.throttle import LoginThrottle
from coordd.runtime import Runtime
from coordd.store.auth import queries

log = structlog.get_logger("coordd.auth")

REFRESH_S = 5.0
# Re-read a little before the last look: a change committed late is not missed.
_OVERLAP = timedelta(seconds=60)
ACCESS_EVENT = "auth.user.access"


@dataclass(frozen=True)
class Access:
    disabled: bool
    epoch: int
    roles: frozenset[str]


@dataclass(frozen=True)
class UserView:
    """What WhoAmI shows of a user (the fields of store.auth.models.User it reads)."""

    id: str
    email: str
    display_name: str
    roles: str
    create_time: datetime
    disabled: bool


_MAX_PROFILES = 100_000


class AuthState:
    """Per Runtime: the access map and the login throttle."""

    def __init__(self, rt: Runtime) -> None:
        self.throttle = LoginThrottle()
        self.access: dict[str, Access] = {}
        # user id -> the user as first read (see current_user); event-loop thread only.
        self.profiles: dict[str, UserView] = {}
        self._lock = threading.Lock()
        self.loaded = False
        self.fresh_until = 0.0
        self._last_look: datetime | None = None
        self._task: asyncio.Future[None] | None = None
        rt.bus.add_listener(self._on_events)

    def apply(self, user_id: str, access: Access) -> None:
        with self._lock:
            self.access[user_id] = access

    def _on_events(self, events: list[Event]) -> None:
        for event in events:
            if event.type == ACCESS_EVENT and event.subject.startswith("users/"):
                data = event.data
                self.apply(
                    event.subject[len("users/") :],
                    Access(bool(data["disabled"]), int(data["epoch"]), frozenset(data["roles"])),
                )

    def start_refresh(self, rt: Runtime) -> asyncio.Future[None]:
        """Starts a reload unless one is running (on the event loop thread)."""
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._load(rt))
        return self._task

    async def refresh(self, rt: Runtime, *, wait: bool) -> None:
        task = self.start_refresh(rt)
        if wait:
            await asyncio.shield(task)

    async def _load(self, rt: Runtime) -> None:
        started = rt.now()
        since = None if self._last_look is None else self._last_look - _OVERLAP
        try:
            rows = await rt.run(queries.users_changed_since, since)
        except Exception as exc:
            self.fresh_until = time.monotonic() + 1.0
            if not self.loaded:
                raise
            log.warning("could not reload changed users; using the last known", error=str(exc))
            return
        with self._lock:
            for row in rows:
                self.access[row.user_id] = Access(row.disabled, row.token_epoch, parse_roles(row.roles))
        self._last_look = started
        self.loaded = True
        self.fresh_until = time.monotonic() + REFRESH_S


_states: weakref.WeakKeyDictionary[Runtime, AuthState] = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()


def state_of(rt: Runtime) -> AuthState:
    state = _states.get(rt)
    if state is None:
        with _states_lock:
            state = _states.get(rt)
            if state is None:
                state = _states[rt] = AuthState(rt)
    return state


async def fresh_state(rt: Runtime) -> AuthState:
    """The state, loaded at least once; a stale map is refreshed in the background."""
    state = state_of(rt)
    if time.monotonic() >= state.fresh_until:
        await state.refresh(rt, wait=not state.loaded)
    return state


def access_changed(rt: Runtime, user_id: str, access: Access) -> None:
    """After a commit that changed a user's access: this replica knows at once."""
    state_of(rt).apply(user_id, access)


def access_event_data(access: Access) -> dict[str, object]:
    return {"disabled": access.disabled, "epoch": access.epoch, "roles": sorted(access.roles)}


async def current_user(rt: Runtime, user_id: str) -> UserView:
    """The user as their access stands now; the database is read once per user and replica
    (see the module doc). NOT_FOUND for an unknown id."""
    state = state_of(rt)
    view = state.profiles.get(user_id)
    if view is None:
        user = await rt.run(queries.user_by_id, user_id)
        if user is None:
            raise NotFound(f"users/{user_id} not found", metadata={"resource": f"users/{user_id}"})
        view = UserView(
            user.id, user.email, user.display_name, user.roles, user.create_time, bool(user.disabled)
        )
        remember(state.profiles, user_id, view, _MAX_PROFILES)
    access = state.access.get(user_id)
    if access is None:
        return view
    return replace(view, roles=format_roles(access.roles), disabled=access.disabled)
