"""Competitions: lifecycle, registration without overselling, waitlist, entries, results.

Seats are allocated by one conditional UPDATE on the competition row
(`confirmed = confirmed + 1 WHERE confirmed + offered < capacity AND now in the window`)
inside one short transaction that also inserts the registration (unique per competition
and user), holds the entry fee in the ledger and writes the confirmation to the outbox.
Nothing slow happens while that transaction is open: webhooks are queued in the shared
outbox (notify/) and delivered later by its scheduler task.

The lifecycle is an explicit, persisted state machine; every transition is a row with its
time and reason. Time-based transitions are made by the scheduler (`advance_due`), which
selects competitions through the indexed `due_time` column and runs chains of immediate
transitions in one tick, up to a bound.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import peewee
import structlog

from coordd.core.errors import FailedPrecondition, InvalidArgument, NotFound, Violations
from coordd.core.principal import Principal, require_owner_or_admin
from coordd.domain import ledger
from coordd.domain.notify import outbox
from coordd.runtime import Runtime
from coordd.store.competition_models import (
    Competition,
    CompetitionEntry,
    CompetitionNotification,
    CompetitionResult,
    CompetitionTransition,
    Registration,
)
from coordd.store.db import Tx, database_proxy
from coordd.store.models import User
from coordd.store.notify.models import Channel
from coordd.store.paging import Page, PageRequest, keyset_page

log = structlog.get_logger("coordd.competition")

# Competition states (the proto enum names without their prefix).
DRAFT = "DRAFT"
OPEN = "OPEN"
REGISTRATION_CLOSED = "REGISTRATION_CLOSED"
RUNNING = "RUNNING"
ENDED = "ENDED"
RESULTS_PUBLISHED = "RESULTS_PUBLISHED"
SETTLED = "SETTLED"
CANCELLED = "CANCELLED"
FAILED = "FAILED"
STATES = (DRAFT, OPEN, REGISTRATION_CLOSED, RUNNING, ENDED, RESULTS_PUBLISHED, SETTLED, CANCELLED, FAILED)
TERMINAL = frozenset({SETTLED, CANCELLED, FAILED})
# Seats still change hands (cancellations, promotions) until the competition starts.
SEATING = frozenset({DRAFT, OPEN, REGISTRATION_CLOSED})

# Registration states.
CONFIRMED = "CONFIRMED"
WAITLISTED = "WAITLISTED"
OFFERED = "OFFERED"
REG_CANCELLED = "CANCELLED"
OFFER_EXPIRED = "OFFER_EXPIRED"
REGISTRATION_STATES = (CONFIRMED, WAITLISTED, OFFERED, REG_CANCELLED, OFFER_EXPIRED)
ACTIVE = frozenset({CONFIRMED, WAITLISTED, OFFERED})

# Notification kinds: at most one of each per registration (a unique key in the outbox).
CONFIRMATION = "confirmation"
OFFER = "offer"
REMINDER = "reminder"
RESULTS = "results"
CANCELLATION = "cancellation"

RESULTS_CONTEXT = b"coordd.competition.results.v1\n"
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
TAG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,49}$")
MAX_TAGS = 20
MAX_CAPACITY = 1_000_000


@dataclass(frozen=True)
class CompetitionSettings:
    """Competition knobs. Defaults serve production; a test or an operator replaces them
    with `configure(rt, ...)` (they are not in config.py, which the platform owns)."""

    default_offer_hold_s: int = 12 * 3600
    default_reminder_lead_s: int = 24 * 3600
    max_entry_bytes: int = 1024 * 1024
    # Scheduler errors on one competition before it goes to FAILED.
    max_errors: int = 5
    # A competition whose advance failed is retried after this long.
    error_retry_s: float = 30.0
    # Immediate transitions made in one tick for one competition.
    max_chain: int = 10
    # Competitions (or offers, reminders) handled per scheduler tick.
    batch: int = 100


DEFAULT_SETTINGS = CompetitionSettings()


def settings_of(rt: Runtime) -> CompetitionSettings:
    return getattr(rt, "competition_settings", None) or DEFAULT_SETTINGS


def configure(rt: Runtime, **changes: Any) -> CompetitionSettings:
    """Replaces some competition settings on this runtime (tests, embedding)."""
    import dataclasses

    new = dataclasses.replace(settings_of(rt), **changes)
    rt.competition_settings = new  # type: ignore[attr-defined]
    return new


# -- views -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CompetitionView:
    competition: Competition
    transitions: list[CompetitionTransition]


@dataclass(frozen=True)
class RegistrationView:
    registration: Registration
    # 1-based place on the waitlist while WAITLISTED, else 0.
    position: int
    created: bool = False


@dataclass(frozen=True)
class SignedResults:
    payload: bytes
    signature: bytes
    key_id: str
    public_key: bytes


@dataclass
class CompetitionInput:
    """What an organizer sets; the API fills it from the proto, the domain validates it."""

    title: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)
    capacity: int = 0
    open_time: datetime | None = None
    close_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    entry_fee: int = 0
    prize_split: list[int] = field(default_factory=list)
    offer_hold_s: int | None = None
    reminder_lead_s: int | None = None


def _name(comp_id: str) -> str:
    return f"competitions/{comp_id}"


def _not_found(comp_id: str) -> NotFound:
    return NotFound(f"{_name(comp_id)} not found", metadata={"resource": _name(comp_id)})


def _reg_not_found(comp_id: str, reg_id: str) -> NotFound:
    name = f"{_name(comp_id)}/registrations/{reg_id}"
    return NotFound(f"{name} not found", metadata={"resource": name})


def _precondition(message: str, reason: str, comp: Competition | None = None) -> FailedPrecondition:
    meta = {"state": comp.state, "competition": _name(comp.id)} if comp is not None else {}
    return FailedPrecondition(message, reason=reason, metadata=meta)


def _visible(who: Principal, comp: Competition) -> bool:
    """Unpublished drafts are private to their owner (and admins); the rest is public."""
    return (
        comp.state != DRAFT or comp.publish_time is not None or comp.owner_id == who.user_id or who.is_admin
    )


def _get_visible(who: Principal, comp_id: str) -> Competition:
    comp = Competition.get_or_none(Competition.id == comp_id)
    if comp is None or not _visible(who, comp):
        raise _not_found(comp_id)
    return comp


def _lock(rt: Runtime, comp_id: str) -> Competition | None:
    """Reads the competition row for change. On PostgreSQL the row is locked until commit;
    on SQLite the write transaction already excludes every other writer."""
    query = Competition.select().where(Competition.id == comp_id)
    if rt.store.is_postgres:
        query = query.for_update()
    return query.first()


def _emit_competition(tx: Tx, comp: Competition, type_: str, data: dict[str, Any] | None = None) -> None:
    tx.emit(f"competition.{type_}", _name(comp.id), {"state": comp.state, **(data or {})})


def _emit_registration(tx: Tx, reg: Registration, type_: str) -> None:
    comp_name = _name(reg.competition_id)
    tx.emit(
        f"competition.registration.{type_}",
        f"{comp_name}/registrations/{reg.id}",
        {"state": reg.state, "user": f"users/{reg.user_id}", "watch_keys": [comp_name]},
    )


# -- validation --------------------------------------------------------------------------


def _validate(
    v: Violations, data: CompetitionInput, now: datetime, fields: Iterable[str] | None = None
) -> None:
    """Checks the fields being set (all on create); time order is checked on the result."""
    check = set(fields) if fields is not None else None

    def wanted(name: str) -> bool:
        return check is None or name in check

    if wanted("title"):
        if not data.title.strip():
            v.add("title", "required")
        elif len(data.title) > 200:
            v.add("title", "at most 200 characters")
    if wanted("description") and len(data.description) > 10_000:
        v.add("description", "at most 10000 characters")
    if wanted("tags"):
        if len(data.tags) > MAX_TAGS:
            v.add("tags", f"at most {MAX_TAGS} tags")
        for index, tag in enumerate(data.tags):
            if not TAG_RE.match(tag):
                v.add(f"tags[{index}]", "lower-case letters, digits, '-' or '_', at most 50 characters")
        if len(set(data.tags)) != len(data.tags):
            v.add("tags", "must not repeat")
    if wanted("capacity") and not 1 <= data.capacity <= MAX_CAPACITY:
        v.add("capacity", f"must be between 1 and {MAX_CAPACITY}")
    for name in ("open_time", "close_time", "start_time", "end_time"):
        if wanted(name) and getattr(data, name) is None:
            v.add(_FIELD_NAMES[name], "required")
    if wanted("entry_fee"):
        _check_fee(v, data.entry_fee)
    if wanted("prize_split"):
        if any(not isinstance(b, int) or b <= 0 for b in data.prize_split):
            v.add("prize_split_bps", "each share must be a positive number of basis points")
        elif sum(data.prize_split) > 10_000:
            v.add("prize_split_bps", "the shares add up to more than 10000 basis points (100 %)")
        if len(data.prize_split) > 100:
            v.add("prize_split_bps", "at most 100 places")
    if wanted("offer_hold_s") and data.offer_hold_s is not None and not 60 <= data.offer_hold_s <= 30 * 86400:
        v.add("offer_hold_duration", "between 1 minute and 30 days")
    if (
        wanted("reminder_lead_s")
        and data.reminder_lead_s is not None
        and not 0 <= data.reminder_lead_s <= 365 * 86400
    ):
        v.add("reminder_lead", "between 0 and 365 days")


def _check_fee(v: Violations, fee: int) -> None:
    if not isinstance(fee, int) or isinstance(fee, bool) or fee < 0:
        v.add("entry_fee", "must not be negative")
    elif fee > ledger.MAX_AMOUNT:
        v.add("entry_fee", f"at most {ledger.MAX_AMOUNT}")


_FIELD_NAMES = {
    "open_time": "registration_open_time",
    "close_time": "registration_close_time",
    "start_time": "start_time",
    "end_time": "end_time",
}


def _check_times(v: Violations, comp: Competition) -> None:
    if comp.open_time >= comp.close_time:
        v.add("registration_close_time", "must be after registration_open_time")
    if comp.close_time > comp.start_time:
        v.add("start_time", "must not be before registration_close_time")
    if comp.start_time >= comp.end_time:
        v.add("end_time", "must be after start_time")


def _tags_text(tags: list[str]) -> str:
    return "," + "".join(f"{t}," for t in tags)


# -- competitions ------------------------------------------------------------------------


def create_competition(rt: Runtime, who: Principal, data: CompetitionInput) -> CompetitionView:
    s = settings_of(rt)
    now = rt.now()
    v = Violations()
    _validate(v, data, now)
    v.raise_if_any()
    comp = Competition(
        owner=who.user_id,
        title=data.title.strip(),
        description=data.description,
        tags=list(data.tags),
        tags_text=_tags_text(data.tags),
        capacity=data.capacity,
        open_time=data.open_time,
        close_time=data.close_time,
        start_time=data.start_time,
        end_time=data.end_time,
        entry_fee=data.entry_fee,
        prize_split=list(data.prize_split),
        offer_hold_s=data.offer_hold_s if data.offer_hold_s is not None else s.default_offer_hold_s,
        reminder_lead_s=data.reminder_lead_s
        if data.reminder_lead_s is not None
        else s.default_reminder_lead_s,
        state=DRAFT,
        errors=[],
    )
    _check_times(v, comp)
    v.raise_if_any()
    with rt.store.write() as tx:
        comp.create_time = comp.update_time = tx.now
        comp.save(force_insert=True)
        _emit_competition(tx, comp, "created", {"owner": f"users/{who.user_id}"})
    return CompetitionView(comp, [])


def get_competition(who: Principal, comp_id: str) -> CompetitionView:
    comp = _get_visible(who, comp_id)
    return CompetitionView(comp, _transitions_of([comp.id])[comp.id])


def _transitions_of(ids: list[str]) -> dict[str, list[CompetitionTransition]]:
    out: dict[str, list[CompetitionTransition]] = {i: [] for i in ids}
    if ids:
        for t in (
            CompetitionTransition.select()
            .where(CompetitionTransition.competition.in_(ids))
            .order_by(CompetitionTransition.id)
        ):
            out[t.competition_id].append(t)
    return out


def list_competitions(
    who: Principal, page: PageRequest, state: str, tag: str, owner_id: str
) -> Page[CompetitionView]:
    query = Competition.select()
    if not who.is_admin:
        query = query.where(
            (Competition.state != DRAFT)
            | Competition.publish_time.is_null(False)
            | (Competition.owner == who.user_id)
        )
    if state:
        query = query.where(Competition.state == state)
    if tag:
        query = query.where(Competition.tags_text.contains(f",{tag},"))
    if owner_id:
        query = query.where(Competition.owner == owner_id)
    found = keyset_page(
        query, Competition.id, page, filters={"state": state, "tag": tag, "owner": owner_id, "u": who.user_id}
    )
    transitions = _transitions_of([c.id for c in found.items])
    return Page([CompetitionView(c, transitions[c.id]) for c in found.items], found.next_token)


UPDATABLE = {
    "title": "title",
    "description": "description",
    "tags": "tags",
    "capacity": "capacity",
    "registration_open_time": "open_time",
    "registration_close_time": "close_time",
    "start_time": "start_time",
    "end_time": "end_time",
    "entry_fee": "entry_fee",
    "prize_split_bps": "prize_split",
    "offer_hold_duration": "offer_hold_s",
    "reminder_lead": "reminder_lead_s",
}
# Changing these after publication would change the deal registrants accepted (and the
# scheduler's due times and reminder time, which publication fixes).
DRAFT_ONLY = frozenset(
    {"open_time", "close_time", "start_time", "end_time", "entry_fee", "prize_split", "reminder_lead_s"}
)


def update_competition(
    rt: Runtime, who: Principal, comp_id: str, data: CompetitionInput, paths: list[str]
) -> CompetitionView:
    v = Violations()
    if not paths:
        v.add("update_mask", "name at least one field to change")
    fields: list[str] = []
    for path in paths:
        if path not in UPDATABLE:
            v.add("update_mask", f"{path!r} cannot be updated")
        else:
            fields.append(UPDATABLE[path])
    v.raise_if_any()
    _validate(v, data, rt.now(), fields)
    v.raise_if_any()
    with rt.store.write() as tx:
        comp = _lock(rt, comp_id)
        if comp is None or not _visible(who, comp):
            raise _not_found(comp_id)
        require_owner_or_admin(who, comp.owner_id, "competition")
        if comp.state in TERMINAL:
            raise _precondition(f"a {comp.state} competition cannot change", "COMPETITION_FINISHED", comp)
        late = sorted(f for f in fields if f in DRAFT_ONLY and comp.publish_time is not None)
        if late:
            raise _precondition(
                f"only an unpublished competition may change {', '.join(late)}", "COMPETITION_PUBLISHED", comp
            )
        if "capacity" in fields and comp.state not in SEATING and data.capacity != comp.capacity:
            raise _precondition(
                "capacity is fixed once the competition has started", "COMPETITION_STARTED", comp
            )
        if "capacity" in fields and data.capacity < comp.confirmed + comp.offered:
            raise FailedPrecondition(
                f"capacity cannot shrink below the {comp.confirmed + comp.offered} seats already taken",
                reason="CAPACITY_BELOW_TAKEN",
                metadata={"taken": str(comp.confirmed + comp.offered)},
            )
        for name in fields:
            value = getattr(data, name)
            if name == "title":
                value = value.strip()
            if name == "offer_hold_s" and value is None:
                value = settings_of(rt).default_offer_hold_s
            if name == "reminder_lead_s" and value is None:
                value = settings_of(rt).default_reminder_lead_s
            setattr(comp, name, value)
        if "tags" in fields:
            comp.tags_text = _tags_text(comp.tags)
        _check_times(v, comp)
        v.raise_if_any()
        if comp.publish_time is not None:
            comp.due_time = _due_time(comp)
        comp.update_time = tx.now
        _promote(tx, comp)
        comp.save()
        _emit_competition(tx, comp, "updated", {"fields": sorted(fields)})
    return CompetitionView(comp, _transitions_of([comp.id])[comp.id])


def publish_competition(rt: Runtime, who: Principal, comp_id: str) -> CompetitionView:
    """DRAFT -> published: the scheduler opens it at registration_open_time (now, if past)."""
    with rt.store.write() as tx:
        comp = _lock(rt, comp_id)
        if comp is None or not _visible(who, comp):
            raise _not_found(comp_id)
        require_owner_or_admin(who, comp.owner_id, "competition")
        if comp.state != DRAFT or comp.publish_time is not None:
            if comp.publish_time is not None and comp.state != CANCELLED:
                # Publishing twice is not an error: the call is naturally idempotent.
                return CompetitionView(comp, _transitions_of([comp.id])[comp.id])
            raise _precondition(f"only a DRAFT can be published, this one is {comp.state}", "NOT_DRAFT", comp)
        if comp.close_time <= tx.now:
            raise _precondition(
                "registration_close_time has passed: move the dates first", "REGISTRATION_WINDOW_PASSED", comp
            )
        comp.publish_time = tx.now
        comp.update_time = tx.now
        lead = timedelta(seconds=comp.reminder_lead_s)
        comp.reminder_time = comp.start_time - lead if comp.reminder_lead_s > 0 else None
        _emit_competition(tx, comp, "published")
        _run_chain(tx, comp, settings_of(rt).max_chain)
        comp.save()
    return CompetitionView(comp, _transitions_of([comp.id])[comp.id])


def cancel_competition(rt: Runtime, who: Principal, comp_id: str, reason: str) -> CompetitionView:
    if len(reason) > 500:
        raise InvalidArgument(
            "reason: at most 500 characters", violations=_one("reason", "at most 500 characters")
        )
    with rt.store.write() as tx:
        comp = _lock(rt, comp_id)
        if comp is None or not _visible(who, comp):
            raise _not_found(comp_id)
        require_owner_or_admin(who, comp.owner_id, "competition")
        if comp.state in TERMINAL or comp.state == RESULTS_PUBLISHED:
            raise _precondition(
                f"a competition in {comp.state} cannot be cancelled", "COMPETITION_FINISHED", comp
            )
        by = "admin" if who.user_id != comp.owner_id else "owner"
        _close_out(tx, comp, CANCELLED, f"cancelled by {by}" + (f": {reason}" if reason else ""))
        comp.save()
    return CompetitionView(comp, _transitions_of([comp.id])[comp.id])


def _one(path: str, description: str) -> list[Any]:
    from coordd.core.errors import FieldViolation

    return [FieldViolation(path, description)]


# -- the state machine ---------------------------------------------------------------------


def _transition(tx: Tx, comp: Competition, to_state: str, reason: str) -> None:
    """The only place a competition changes state: stored with time and reason."""
    CompetitionTransition.create(
        competition=comp.id, from_state=comp.state, to_state=to_state, reason=reason[:500], time=tx.now
    )
    if to_state in (CANCELLED, FAILED):
        comp.previous_state = comp.state
    log.info(
        "competition transition", competition=comp.id, from_state=comp.state, to_state=to_state, why=reason
    )
    _emit_competition(tx, comp, "state_changed", {"from": comp.state, "to": to_state, "reason": reason})
    comp.state = to_state
    comp.update_time = tx.now


def _next_step(comp: Competition, now: datetime) -> tuple[str, str] | None:
    """The time-based (or immediate) transition due now, if any."""
    state = comp.state
    if state == DRAFT and comp.publish_time is not None and now >= comp.open_time:
        return OPEN, "registration opened"
    if state == OPEN and now >= comp.close_time:
        return REGISTRATION_CLOSED, "registration deadline reached"
    if state == REGISTRATION_CLOSED and now >= comp.start_time:
        return RUNNING, "start time reached"
    if state == RUNNING and now >= comp.end_time:
        return ENDED, "end time reached"
    if state == RESULTS_PUBLISHED:
        return SETTLED, "prizes paid and fees settled"
    return None


def _due_time(comp: Competition) -> datetime | None:
    state = comp.state
    if state == DRAFT:
        return comp.open_time if comp.publish_time is not None else None
    return {
        OPEN: comp.close_time,
        REGISTRATION_CLOSED: comp.start_time,
        RUNNING: comp.end_time,
        RESULTS_PUBLISHED: comp.update_time,
    }.get(state)


def _run_chain(tx: Tx, comp: Competition, bound: int) -> int:
    """Makes every transition due now, at most `bound` of them; the caller saves."""
    steps = 0
    while steps < bound:
        step = _next_step(comp, tx.now)
        if step is None:
            break
        _transition(tx, comp, *step)
        if comp.state == RUNNING:
            _end_offers(tx, comp)
        steps += 1
    comp.due_time = _due_time(comp)
    return steps


def _end_offers(tx: Tx, comp: Competition) -> None:
    """At the start no seat changes hands any more: open offers lapse."""
    for reg in Registration.select().where(
        (Registration.competition == comp.id) & (Registration.state == OFFERED)
    ):
        reg.state = OFFER_EXPIRED
        reg.offer_expire_time = None
        reg.update_time = tx.now
        reg.save()
        comp.offered -= 1
        _emit_registration(tx, reg, "offer_expired")


def advance_due(rt: Runtime) -> int:
    """Scheduler task: advances every competition whose due_time has come."""
    s = settings_of(rt)
    now = rt.now()
    due = [
        c.id
        for c in Competition.select(Competition.id)
        .where(Competition.due_time <= now)
        .order_by(Competition.due_time)
        .limit(s.batch)
    ]
    moved = 0
    for comp_id in due:
        try:
            moved += _advance_one(rt, comp_id)
        except Exception as exc:
            log.warning("competition advance failed", competition=comp_id, error=str(exc))
            _record_error(rt, comp_id, f"{type(exc).__name__}: {exc}")
    return moved


def _advance_one(rt: Runtime, comp_id: str) -> int:
    with rt.store.write() as tx:
        comp = _lock(rt, comp_id)
        if comp is None or comp.due_time is None or comp.due_time > tx.now:
            return 0
        steps = _run_chain(tx, comp, settings_of(rt).max_chain)
        comp.save()
        return steps


def _record_error(rt: Runtime, comp_id: str, message: str) -> None:
    """Appends to the error list; after `max_errors` the competition goes to FAILED."""
    s = settings_of(rt)
    with rt.store.write() as tx:
        comp = _lock(rt, comp_id)
        if comp is None or comp.state in TERMINAL:
            return
        comp.errors = [*comp.errors, {"message": message[:1000], "time": tx.now.isoformat()}]
        if len(comp.errors) >= s.max_errors:
            _close_out(tx, comp, FAILED, f"failed after {len(comp.errors)} errors; last: {message[:300]}")
        else:
            comp.due_time = tx.now + timedelta(seconds=s.error_retry_s)
        comp.update_time = tx.now
        comp.save()


def _close_out(tx: Tx, comp: Competition, to_state: str, reason: str) -> None:
    """CANCELLED or FAILED: refund every held fee and tell every active registrant."""
    _transition(tx, comp, to_state, reason)
    comp.due_time = None
    comp.reminder_time = None
    held = list(
        Registration.select().where((Registration.competition == comp.id) & (Registration.fee_held > 0))
    )
    if held:
        ledger.post(
            tx,
            "competition.refund",
            _name(comp.id),
            [m for r in held for m in _refund_movements(r)],
            memo=reason[:500],
        )
        Registration.update(fee_held=0, update_time=tx.now).where(
            Registration.id.in_([r.id for r in held])
        ).execute()
    active = Registration.select(Registration.id, Registration.user).where(
        (Registration.competition == comp.id) & (Registration.state.in_(ACTIVE))
    )
    _notify_many(tx, comp, [(r.id, r.user_id) for r in active], CANCELLATION, {"reason": reason})


def _refund_movements(reg: Registration) -> list[tuple[str, int]]:
    return [
        (ledger.held_account(reg.user_id), -reg.fee_held),
        (ledger.available_account(reg.user_id), reg.fee_held),
    ]


# -- notifications ------------------------------------------------------------------------------


def _payload(comp: Competition, kind: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "kind": kind,
        "competition": _name(comp.id),
        "title": comp.title,
        "state": comp.state,
        "start_time": comp.start_time.isoformat(),
        **(extra or {}),
    }


def _notify(
    tx: Tx, comp: Competition, reg: Registration, kind: str, extra: dict[str, Any] | None = None
) -> None:
    _notify_many(tx, comp, [(reg.id, reg.user_id)], kind, extra)


def _notify_many(
    tx: Tx,
    comp: Competition,
    targets: Iterable[tuple[str, str]],
    kind: str,
    extra: dict[str, Any] | None = None,
    known_new: bool = False,
) -> int:
    """Records each (registration, kind) once and queues it to the registrant's webhook
    channels through the shared outbox, in the caller's transaction. The unique key makes a
    retried or repeated step (a scheduler restart, a replayed call) notify nobody twice."""
    wanted = dict(targets)
    if not wanted:
        return 0
    done: set[str] = set()
    ids = [] if known_new else list(wanted)  # a registration created in this transaction has none
    for start in range(0, len(ids), 500):
        done.update(
            r.registration_id
            for r in CompetitionNotification.select(CompetitionNotification.registration).where(
                CompetitionNotification.registration.in_(ids[start : start + 500])
                & (CompetitionNotification.kind == kind)
            )
        )
    todo = [(reg_id, user_id) for reg_id, user_id in wanted.items() if reg_id not in done]
    with_channels = _with_channels([user_id for _, user_id in todo])
    rows = []
    for reg_id, user_id in todo:
        payload = _notification_payload(comp, reg_id, user_id, kind, extra)
        queued = 0
        if user_id in with_channels:
            queued = outbox.enqueue(
                tx, {user_id}, f"competition.{kind}", f"{payload['registration']}:{kind}", payload
            )
        if len(todo) == 1:
            _record_notification(tx, comp, reg_id, user_id, kind, extra, queued, payload)
            return 1
        log.info("competition notification", kind=kind, registration=payload["registration"], queued=queued)
        rows.append(
            {
                "registration": reg_id,
                "user": user_id,
                "competition": comp.id,
                "kind": kind,
                "payload": payload,
                "deliveries_queued": queued,
                "create_time": tx.now,
            }
        )
    for start in range(0, len(rows), 200):
        CompetitionNotification.insert_many(rows[start : start + 200]).execute()
    return len(rows)


def _notification_payload(
    comp: Competition, reg_id: str, user_id: str, kind: str, extra: dict[str, Any] | None
) -> dict[str, Any]:
    name = f"{_name(comp.id)}/registrations/{reg_id}"
    return _payload(comp, kind, {"registration": name, "user": f"users/{user_id}", **(extra or {})})


def _record_notification(
    tx: Tx,
    comp: Competition,
    reg_id: str,
    user_id: str,
    kind: str,
    extra: dict[str, Any] | None,
    queued: int,
    payload: dict[str, Any] | None = None,
) -> None:
    """One notification record, as a fixed statement (the registration hot path)."""
    payload = payload or _notification_payload(comp, reg_id, user_id, kind, extra)
    log.info("competition notification", kind=kind, registration=payload["registration"], queued=queued)
    db = database_proxy.obj
    db.execute_sql(
        f'INSERT INTO "{CompetitionNotification._meta.table_name}" (registration_id, user_id,'
        " competition_id, kind, payload, deliveries_queued, create_time)"
        f" VALUES ({', '.join([db.param] * 7)})",
        (
            reg_id,
            user_id,
            comp.id,
            kind,
            CompetitionNotification.payload.db_value(payload),
            queued,
            CompetitionNotification.create_time.db_value(tx.now),
        ),
    )


def _with_channels(user_ids: list[str]) -> set[str]:
    """Which of these users have a live webhook channel: most registrants have none, and
    asking once here is much cheaper than a full outbox enqueue per registrant."""
    if not user_ids:
        return set()
    db = database_proxy.obj
    table, owner, deleted = (
        Channel._meta.table_name,
        Channel.owner.column_name,
        Channel.delete_time.column_name,
    )
    found: set[str] = set()
    for start in range(0, len(user_ids), 500):
        chunk = user_ids[start : start + 500]
        cursor = db.execute_sql(
            f'SELECT DISTINCT {owner} FROM "{table}" WHERE {deleted} IS NULL'
            f" AND {owner} IN ({', '.join([db.param] * len(chunk))})",
            tuple(chunk),
        )
        found.update(r[0] for r in cursor.fetchall())
    return found


# -- registration ------------------------------------------------------------------------------


def _window(now: datetime) -> peewee.Expression:
    """The registration window, as a SQL condition: published, not finished, now inside it."""
    return (
        Competition.state.in_([DRAFT, OPEN])
        & Competition.publish_time.is_null(False)
        & (Competition.open_time <= now)
        & (Competition.close_time > now)
    )


# Registrations of one competition per PostgreSQL transaction, at most.
MAX_BATCH = 64


@dataclass
class _Pending:
    """One caller's registration waiting in its competition's group."""

    who: Principal
    wake: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    finished: bool = False
    result: RegistrationView | None = None
    error: BaseException | None = None


class _Group:
    """The callers registering for one competition in this process right now."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: list[_Pending] = []
        self.busy = False


_groups: weakref.WeakValueDictionary[str, _Group] = weakref.WeakValueDictionary()
_groups_guard = threading.Lock()


def _group_for(comp_id: str) -> _Group:
    with _groups_guard:
        group = _groups.get(comp_id)
        if group is None:
            group = _groups[comp_id] = _Group()
        return group


def register(rt: Runtime, who: Principal, comp_id: str) -> RegistrationView:
    """Registers `who`. On PostgreSQL, registrations for one competition serialize on its
    row, and the lock is held until the commit, whose WAL flush then dominates. So callers
    arriving together are grouped (per process): one of them runs up to MAX_BATCH
    registrations in one transaction, each in its own savepoint (a failure, e.g. missing
    funds, undoes only that one), and all answers are handed out after the one commit.
    Nobody waits for a batch that started after it arrived; the next leader is the oldest
    caller still waiting. SQLite commits are cheap and its writes are serialized already."""
    if not rt.store.is_postgres:
        return _register_once(rt, who, comp_id)
    group = _group_for(comp_id)
    me = _Pending(who)
    with group.lock:
        group.queue.append(me)
        if not group.busy:
            group.busy = me.lead = True
    while not me.finished:
        if me.lead:
            _lead(rt, comp_id, group)
        else:
            me.wake.wait()
            me.wake.clear()
    if me.error is not None:
        raise me.error
    assert me.result is not None
    return me.result


def _lead(rt: Runtime, comp_id: str, group: _Group) -> None:
    with group.lock:
        batch = group.queue[:MAX_BATCH]
        del group.queue[:MAX_BATCH]
    try:
        _run_batch(rt, comp_id, batch)
    finally:
        with group.lock:
            if group.queue:
                successor = group.queue[0]
                successor.lead = True
                successor.wake.set()
            else:
                group.busy = False
        for pending in batch:
            pending.lead = False
            pending.finished = True
            pending.wake.set()


def _run_batch(rt: Runtime, comp_id: str, batch: list[_Pending]) -> None:
    outcomes: list[tuple[RegistrationView | None, BaseException | None]] = []
    try:
        with rt.store.write() as tx:
            for pending in batch:
                mark = len(tx.pending_events)
                try:
                    with rt.store.db.atomic():  # a savepoint
                        view = _register_in(rt, tx, pending.who, comp_id)
                    outcomes.append((view, None))
                except peewee.IntegrityError:
                    # The same user twice in flight: the first one's row is the answer.
                    del tx.pending_events[mark:]
                    reg = Registration.get_or_none(
                        (Registration.competition == comp_id) & (Registration.user == pending.who.user_id)
                    )
                    outcomes.append((RegistrationView(reg, _position(reg)), None) if reg else (None, _lost()))
                except Exception as exc:
                    del tx.pending_events[mark:]
                    outcomes.append((None, exc))
    except Exception as exc:
        # The commit (or the connection) failed: nobody's registration happened.
        for pending in batch:
            pending.error = exc
        return
    for pending, (view, error) in zip(batch, outcomes, strict=True):
        pending.result, pending.error = view, error


def _lost() -> FailedPrecondition:
    return FailedPrecondition("the registration conflicted with another; retry", reason="CONFLICT")


def _register_once(rt: Runtime, who: Principal, comp_id: str) -> RegistrationView:
    try:
        return _register(rt, who, comp_id)
    except peewee.IntegrityError:
        # A concurrent call for the same user won the unique (competition, user) key; its
        # registration is the answer and this transaction rolled back (seat included).
        reg = Registration.get_or_none(
            (Registration.competition == comp_id) & (Registration.user == who.user_id)
        )
        if reg is None:
            raise
        return RegistrationView(reg, _position(reg), created=False)


_HOT_COLUMNS = (
    "confirmed",
    "waitlisted",
    "waitlist_seq",
    "entry_fee",
    "title",
    "state",
    "start_time",
    "publish_time",
    "reminder_time",
    "reminder_lead_s",
)
_hot_sql: dict[str, dict[str, str]] = {}


def _sql_for(rt: Runtime) -> dict[str, str]:
    """The registration hot path as fixed SQL strings, built once per placeholder style:
    building them with the query builder on every call cost more than running them."""
    p = rt.store.db.param
    found = _hot_sql.get(p)
    if found is None:
        comp, reg = Competition._meta.table_name, Registration._meta.table_name
        window = (
            f"state IN ('{DRAFT}', '{OPEN}') AND publish_time IS NOT NULL"
            f" AND open_time <= {p} AND close_time > {p}"
        )
        returning = ", ".join(_HOT_COLUMNS)
        columns = (
            "id, competition_id, user_id, state, waitlist_seq, fee_held, create_time, update_time,"
            " confirm_time"
        )
        found = _hot_sql[p] = {
            "existing": f'SELECT id FROM "{reg}" WHERE competition_id = {p} AND user_id = {p}',
            "seat": (
                f'UPDATE "{comp}" SET confirmed = confirmed + 1, update_time = {p}'
                f" WHERE id = {p} AND confirmed + offered < capacity AND {window} RETURNING {returning}"
            ),
            "waitlist": (
                f'UPDATE "{comp}" SET waitlisted = waitlisted + 1, waitlist_seq = waitlist_seq + 1,'
                f" update_time = {p} WHERE id = {p} AND confirmed + offered >= capacity AND {window}"
                f" RETURNING {returning}"
            ),
            "full": (
                "SELECT confirmed + offered >= capacity, title, state, start_time"
                f' FROM "{comp}" WHERE id = {p}'
            ),
            "unnote": (
                f'DELETE FROM "{CompetitionNotification._meta.table_name}" WHERE registration_id = {p}'
                f" AND kind = '{CONFIRMATION}'"
            ),
            "insert": f'INSERT INTO "{reg}" ({columns}) VALUES ({", ".join([p] * 9)})',
            "to_waitlist": (
                f'UPDATE "{reg}" SET state = {p}, waitlist_seq = {p}, confirm_time = NULL WHERE id = {p}'
            ),
            "to_seat": f'UPDATE "{reg}" SET state = {p}, confirm_time = {p} WHERE id = {p}',
            "fee": f'UPDATE "{reg}" SET fee_held = {p} WHERE id = {p}',
        }
    return found


def _register(rt: Runtime, who: Principal, comp_id: str) -> RegistrationView:
    with rt.store.write() as tx:
        return _register_in(rt, tx, who, comp_id)


def _register_in(rt: Runtime, tx: Tx, who: Principal, comp_id: str) -> RegistrationView:
    """One short transaction. The registration row is written first, as a guess made from
    an unlocked read of the counters; only then the conditional seat (or waitlist) UPDATE
    takes the competition row's lock, so on PostgreSQL the lock covers as few statements
    as possible before the commit. The guess is only an optimisation: the outcome is
    decided by the UPDATE's condition, and a wrong guess is corrected under the lock."""
    sql = _sql_for(rt)
    db = rt.store.db
    now = tx.now
    stamp = Competition.update_time.db_value(now)
    row = db.execute_sql(sql["existing"], (comp_id, who.user_id)).fetchone()
    existing = Registration.get_by_id(row[0]) if row else None
    if existing is not None and existing.state in ACTIVE:
        return RegistrationView(existing, _position(existing), created=False)
    row = db.execute_sql(sql["full"], (comp_id,)).fetchone()
    if row is None:
        raise _not_found(comp_id)
    guess_seat = not row[0]
    comp = Competition(
        id=comp_id, title=row[1], state=row[2], start_time=Competition.start_time.python_value(row[3])
    )
    reg = existing or Registration(competition=comp_id, user=who.user_id, create_time=now)
    reg.state = CONFIRMED if guess_seat else WAITLISTED
    reg.waitlist_seq = None
    reg.offer_expire_time = None
    reg.confirm_time = now if guess_seat else None
    reg.update_time = now
    reg.fee_held = 0
    if existing is None:
        # Before any lock: a second registration of the same user fails here, early.
        db.execute_sql(
            sql["insert"],
            (
                reg.id,
                comp_id,
                who.user_id,
                reg.state,
                None,
                0,
                stamp,
                stamp,
                stamp if guess_seat else None,
            ),
        )
    else:
        reg.save()
    noted = False
    if guess_seat and existing is None and not _with_channels([who.user_id]):
        # The confirmation record too (undone below if the guess was wrong); registrants
        # with a webhook channel are queued to the outbox after the seat is certain.
        _record_notification(tx, comp, reg.id, who.user_id, CONFIRMATION, {}, 0)
        noted = True
    # The seat: a conditional UPDATE (the deadline is part of it); RETURNING hands back
    # the row as updated. The waitlist UPDATE only applies while every seat is taken.
    params = (stamp, comp_id, stamp, stamp)
    attempts = ("seat", "waitlist") if guess_seat else ("waitlist", "seat")
    values: list[Any] = []
    for attempt in attempts:
        values = db.execute_sql(sql[attempt], params).fetchall()
        if values:
            took_seat = attempt == "seat"
            break
    if not values:
        found = Competition.get_or_none(Competition.id == comp_id)
        if found is None or not _visible(who, found):
            raise _not_found(comp_id)
        raise _closed(found, now)
    got = dict(zip(_HOT_COLUMNS, values[0], strict=True))
    comp.entry_fee = got["entry_fee"]
    comp.publish_time = Competition.publish_time.python_value(got["publish_time"])
    comp.reminder_time = Competition.reminder_time.python_value(got["reminder_time"])
    comp.reminder_lead_s = got["reminder_lead_s"]
    if took_seat and not guess_seat:
        reg.state, reg.confirm_time = CONFIRMED, now
        db.execute_sql(sql["to_seat"], (CONFIRMED, stamp, reg.id))
    elif not took_seat:
        reg.state, reg.confirm_time, reg.waitlist_seq = WAITLISTED, None, got["waitlist_seq"]
        db.execute_sql(sql["to_waitlist"], (WAITLISTED, reg.waitlist_seq, reg.id))
    if took_seat and comp.entry_fee > 0:
        ledger.hold(
            tx,
            who.user_id,
            comp.entry_fee,
            f"{_name(comp_id)}/registrations/{reg.id}",
            "competition.entry_fee",
        )
        reg.fee_held = comp.entry_fee
        db.execute_sql(sql["fee"], (reg.fee_held, reg.id))
    if took_seat and not noted:
        _notify_many(tx, comp, [(reg.id, reg.user_id)], CONFIRMATION, known_new=existing is None)
    if took_seat:
        _late_reminder(tx, comp, reg)
    elif noted and not took_seat:
        db.execute_sql(sql["unnote"], (reg.id,))
    _emit_registration(tx, reg, "created")
    # A newcomer joins the tail: everyone waitlisted is ahead of it.
    return RegistrationView(reg, 0 if took_seat else got["waitlisted"], created=True)


def _closed(comp: Competition, now: datetime) -> FailedPrecondition:
    if comp.state in TERMINAL or comp.state not in (DRAFT, OPEN):
        return _precondition(
            f"registration is closed: the competition is {comp.state}", "REGISTRATION_CLOSED", comp
        )
    if comp.publish_time is None:
        return _precondition("the competition is not published", "NOT_PUBLISHED", comp)
    if now < comp.open_time:
        return _precondition("registration has not opened yet", "REGISTRATION_NOT_OPEN", comp)
    return _precondition("the registration deadline has passed", "REGISTRATION_CLOSED", comp)


def _position(reg: Registration) -> int:
    if reg.state != WAITLISTED or reg.waitlist_seq is None:
        return 0
    return (
        Registration.select()
        .where(
            (Registration.competition == reg.competition_id)
            & (Registration.state == WAITLISTED)
            & (Registration.waitlist_seq <= reg.waitlist_seq)
        )
        .count()
    )


def _own_registration(
    rt: Runtime, who: Principal, comp_id: str, reg_id: str
) -> tuple[Competition, Registration]:
    """Locks the competition, then reads the caller's registration (admins: anyone's)."""
    comp = _lock(rt, comp_id)
    reg = Registration.get_or_none((Registration.id == reg_id) & (Registration.competition == comp_id))
    if comp is None or reg is None or (reg.user_id != who.user_id and not who.is_admin):
        raise _reg_not_found(comp_id, reg_id)
    return comp, reg


def cancel_registration(rt: Runtime, who: Principal, comp_id: str, reg_id: str) -> RegistrationView:
    with rt.store.write() as tx:
        comp, reg = _own_registration(rt, who, comp_id, reg_id)
        if reg.state not in ACTIVE:
            return RegistrationView(reg, 0)
        if comp.state not in SEATING or tx.now >= comp.start_time:
            raise _precondition(
                "registrations can be cancelled only before the competition starts",
                "COMPETITION_STARTED",
                comp,
            )
        if reg.state == CONFIRMED:
            comp.confirmed -= 1
        elif reg.state == OFFERED:
            comp.offered -= 1
        else:
            comp.waitlisted -= 1
        if reg.fee_held > 0:
            ledger.refund(
                tx,
                reg.user_id,
                reg.fee_held,
                f"{_name(comp_id)}/registrations/{reg.id}",
                "competition.refund",
            )
            reg.fee_held = 0
        reg.state = REG_CANCELLED
        reg.offer_expire_time = None
        reg.update_time = tx.now
        reg.save()
        _emit_registration(tx, reg, "cancelled")
        _promote(tx, comp)
        comp.update_time = tx.now
        comp.save()
    return RegistrationView(reg, 0)


def _promote(tx: Tx, comp: Competition) -> None:
    """Gives free seats to the head of the waitlist: straight to CONFIRMED when the
    competition is free, otherwise an offer held for `offer_hold_s` (never past the start)."""
    if comp.state not in SEATING or tx.now >= comp.start_time:
        return
    while comp.confirmed + comp.offered < comp.capacity and comp.waitlisted > 0:
        head = (
            Registration.select()
            .where((Registration.competition == comp.id) & (Registration.state == WAITLISTED))
            .order_by(Registration.waitlist_seq)
            .first()
        )
        if head is None:
            break
        comp.waitlisted -= 1
        head.update_time = tx.now
        if comp.entry_fee == 0:
            head.state = CONFIRMED
            head.confirm_time = tx.now
            comp.confirmed += 1
            head.save()
            _notify(tx, comp, head, CONFIRMATION, {"promoted": True})
            _late_reminder(tx, comp, head)
        else:
            head.state = OFFERED
            head.offer_expire_time = min(tx.now + timedelta(seconds=comp.offer_hold_s), comp.start_time)
            comp.offered += 1
            head.save()
            _notify(
                tx,
                comp,
                head,
                OFFER,
                {"offer_expire_time": head.offer_expire_time.isoformat(), "fee": comp.entry_fee},
            )
        _emit_registration(tx, head, "promoted")


def _late_reminder(tx: Tx, comp: Competition, reg: Registration) -> None:
    """Someone confirmed after the reminders went out gets theirs now (once, as ever)."""
    if (
        comp.publish_time is not None
        and comp.reminder_lead_s > 0
        and comp.reminder_time is None
        and tx.now >= comp.start_time - timedelta(seconds=comp.reminder_lead_s)
    ):
        _notify(tx, comp, reg, REMINDER)


def accept_offer(rt: Runtime, who: Principal, comp_id: str, reg_id: str) -> RegistrationView:
    with rt.store.write() as tx:
        comp, reg = _own_registration(rt, who, comp_id, reg_id)
        if reg.state == CONFIRMED:
            return RegistrationView(reg, 0)
        if reg.state != OFFERED or reg.offer_expire_time is None or reg.offer_expire_time <= tx.now:
            raise FailedPrecondition(
                "there is no open offer for this registration",
                reason="NO_OPEN_OFFER",
                metadata={"registration_state": reg.state},
            )
        if comp.entry_fee > 0:
            ledger.hold(
                tx,
                reg.user_id,
                comp.entry_fee,
                f"{_name(comp_id)}/registrations/{reg.id}",
                "competition.entry_fee",
            )
            reg.fee_held = comp.entry_fee
        comp.offered -= 1
        comp.confirmed += 1
        comp.update_time = tx.now
        comp.save()
        reg.state = CONFIRMED
        reg.confirm_time = tx.now
        reg.offer_expire_time = None
        reg.update_time = tx.now
        reg.save()
        _notify(tx, comp, reg, CONFIRMATION, {"promoted": True})
        _late_reminder(tx, comp, reg)
        _emit_registration(tx, reg, "confirmed")
    return RegistrationView(reg, 0)


def expire_offers(rt: Runtime) -> int:
    """Scheduler task: offers past their hold time lapse and the seat moves on."""
    s = settings_of(rt)
    now = rt.now()
    due = list(
        Registration.select(Registration.id, Registration.competition)
        .where((Registration.offer_expire_time <= now) & (Registration.state == OFFERED))
        .limit(s.batch)
    )
    expired = 0
    for row in due:
        with rt.store.write() as tx:
            comp = _lock(rt, row.competition_id)
            reg = Registration.get_or_none(Registration.id == row.id)
            if comp is None or reg is None or reg.state != OFFERED or reg.offer_expire_time > tx.now:
                continue
            reg.state = OFFER_EXPIRED
            reg.offer_expire_time = None
            reg.update_time = tx.now
            reg.save()
            comp.offered -= 1
            _emit_registration(tx, reg, "offer_expired")
            _promote(tx, comp)
            comp.update_time = tx.now
            comp.save()
            expired += 1
    return expired


def queue_reminders(rt: Runtime) -> int:
    """Scheduler task: one reminder per confirmed registration, once. The competition's
    reminder_time is cleared in the same transaction that writes the outbox rows, and the
    outbox's unique (registration, kind) key holds even if that ever ran twice."""
    s = settings_of(rt)
    now = rt.now()
    due = [
        c.id
        for c in Competition.select(Competition.id).where(Competition.reminder_time <= now).limit(s.batch)
    ]
    queued = 0
    for comp_id in due:
        with rt.store.write() as tx:
            comp = _lock(rt, comp_id)
            if comp is None or comp.reminder_time is None or comp.reminder_time > tx.now:
                continue
            if comp.state in SEATING and tx.now < comp.start_time:
                confirmed = Registration.select(Registration.id, Registration.user).where(
                    (Registration.competition == comp.id) & (Registration.state == CONFIRMED)
                )
                queued += _notify_many(tx, comp, [(r.id, r.user_id) for r in confirmed], REMINDER)
            comp.reminder_time = None
            comp.save()
    return queued


# -- lists ---------------------------------------------------------------------------------


def _owned(who: Principal, comp_id: str) -> Competition:
    comp = _get_visible(who, comp_id)
    require_owner_or_admin(who, comp.owner_id, "competition")
    return comp


def _with_positions(regs: list[Registration]) -> list[RegistrationView]:
    return [RegistrationView(r, _position(r)) for r in regs]


def list_registrations(who: Principal, comp_id: str, page: PageRequest, state: str) -> Page[RegistrationView]:
    _owned(who, comp_id)
    query = Registration.select().where(Registration.competition == comp_id)
    if state:
        query = query.where(Registration.state == state)
    found = keyset_page(query, Registration.id, page, filters={"c": comp_id, "state": state})
    return Page(_with_positions(found.items), found.next_token)


def list_my_registrations(who: Principal, page: PageRequest) -> Page[RegistrationView]:
    query = Registration.select().where(Registration.user == who.user_id)
    found = keyset_page(query, Registration.id, page, filters={"u": who.user_id})
    return Page(_with_positions(found.items), found.next_token)


EXPORT_COLUMNS = (
    "registration",
    "user",
    "email",
    "display_name",
    "state",
    "position",
    "fee_held",
    "create_time",
    "confirm_time",
)


def export_batches(who: Principal, comp_id: str, batch: int = 500) -> Iterator[list[list[str]]]:
    """CSV rows of every registration, in batches (each batch is one short read)."""
    _owned(who, comp_id)
    positions = {
        r.id: index
        for index, r in enumerate(
            Registration.select(Registration.id)
            .where((Registration.competition == comp_id) & (Registration.state == WAITLISTED))
            .order_by(Registration.waitlist_seq),
            start=1,
        )
    }
    after = ""
    while True:
        rows = list(
            Registration.select(Registration, User)
            .join(User)
            .where((Registration.competition == comp_id) & (Registration.id > after))
            .order_by(Registration.id)
            .limit(batch)
        )
        if not rows:
            return
        yield [
            [
                f"{_name(comp_id)}/registrations/{r.id}",
                f"users/{r.user_id}",
                r.user.email,
                r.user.display_name,
                r.state,
                str(positions.get(r.id, 0)),
                str(r.fee_held),
                r.create_time.isoformat(),
                r.confirm_time.isoformat() if r.confirm_time else "",
            ]
            for r in rows
        ]
        after = rows[-1].id


# -- entries and results ---------------------------------------------------------------------


def submit_entry(
    rt: Runtime, who: Principal, comp_id: str, payload: bytes, uri: str, digest: str
) -> CompetitionEntry:
    s = settings_of(rt)
    v = Violations()
    if payload and uri:
        v.add("uri", "give either payload or uri + digest, not both")
    elif not payload and not uri:
        v.add("payload", "required (or uri + digest)")
    if len(payload) > s.max_entry_bytes:
        v.add("payload", f"at most {s.max_entry_bytes} bytes")
    if uri:
        if len(uri) > 2048 or not re.match(r"^[a-z][a-z0-9+.-]*://\S+$", uri):
            v.add("uri", "an absolute URI, at most 2048 characters")
        if not DIGEST_RE.match(digest):
            v.add("digest", "required with uri: sha256:<64 lower-case hex>")
    elif digest and payload and digest != "sha256:" + hashlib.sha256(payload).hexdigest():
        v.add("digest", "does not match the payload")
    v.raise_if_any()
    with rt.store.write() as tx:
        comp = _get_visible(who, comp_id)
        reg = Registration.get_or_none(
            (Registration.competition == comp_id) & (Registration.user == who.user_id)
        )
        if reg is None or reg.state != CONFIRMED:
            raise FailedPrecondition(
                "only confirmed participants submit entries",
                reason="NOT_CONFIRMED",
                metadata={"competition": _name(comp_id)},
            )
        if comp.state != RUNNING or not comp.start_time <= tx.now < comp.end_time:
            raise _precondition(
                "entries are accepted only while the competition is running", "NOT_RUNNING", comp
            )
        entry = CompetitionEntry.get_or_none(CompetitionEntry.registration == reg.id)
        revision = 1 if entry is None else entry.revision + 1
        if entry is None:
            entry = CompetitionEntry(registration=reg.id, competition=comp_id, user=who.user_id)
        entry.payload = payload or None
        entry.uri = uri
        entry.digest = digest if uri else "sha256:" + hashlib.sha256(payload).hexdigest()
        entry.size_bytes = len(payload)
        entry.revision = revision
        entry.submit_time = tx.now
        entry.save(force_insert=revision == 1)
        tx.emit(
            "competition.entry.submitted",
            f"{_name(comp_id)}/entries/{entry.id}",
            {"user": f"users/{who.user_id}", "revision": revision, "watch_keys": [_name(comp_id)]},
        )
    return entry


def publish_results(
    rt: Runtime, who: Principal, comp_id: str, ranking: list[tuple[str, float]]
) -> tuple[CompetitionView, SignedResults]:
    """Signs the ranking and pays prizes from the fee pool, in one transaction."""
    v = Violations()
    seen: set[str] = set()
    for index, (user_id, score) in enumerate(ranking):
        if user_id in seen:
            v.add(f"ranking[{index}].user", "listed twice")
        seen.add(user_id)
        if score != score or score in (float("inf"), float("-inf")):
            v.add(f"ranking[{index}].score", "must be a finite number")
    v.raise_if_any()
    with rt.store.write() as tx:
        comp = _lock(rt, comp_id)
        if comp is None or not _visible(who, comp):
            raise _not_found(comp_id)
        require_owner_or_admin(who, comp.owner_id, "competition")
        if comp.state != ENDED:
            raise _precondition(
                f"results are published once the competition has ENDED, not {comp.state}", "NOT_ENDED", comp
            )
        confirmed = {
            r.user_id: r
            for r in Registration.select().where(
                (Registration.competition == comp_id) & (Registration.state == CONFIRMED)
            )
        }
        for index, (user_id, _) in enumerate(ranking):
            if user_id not in confirmed:
                v.add(f"ranking[{index}].user", "not a confirmed participant of this competition")
        v.raise_if_any()
        pool = sum(r.fee_held for r in confirmed.values())
        prizes = [pool * bps // 10_000 for bps in comp.prize_split]
        rows = []
        for index, (user_id, score) in enumerate(ranking):
            prize = prizes[index] if index < len(prizes) else 0
            rows.append({"rank": index + 1, "user": user_id, "score": float(score), "prize": prize})
        paid = sum(r["prize"] for r in rows)
        if pool > 0:
            movements: list[tuple[str, int]] = [
                (ledger.held_account(r.user_id), -r.fee_held) for r in confirmed.values() if r.fee_held > 0
            ]
            movements += [(ledger.available_account(r["user"]), r["prize"]) for r in rows if r["prize"] > 0]
            if pool - paid > 0:
                # What the split leaves (shares under 100 %, rounding) goes to the organizer.
                movements.append((ledger.available_account(comp.owner_id), pool - paid))
            ledger.post(tx, "competition.prizes", _name(comp_id), movements)
            Registration.update(fee_held=0, update_time=tx.now).where(
                (Registration.competition == comp_id) & (Registration.fee_held > 0)
            ).execute()
        CompetitionResult.insert_many(
            [
                {
                    "competition": comp_id,
                    "rank": r["rank"],
                    "user": r["user"],
                    "score": r["score"],
                    "prize": r["prize"],
                }
                for r in rows
            ]
        ).execute() if rows else None
        document = {
            "competition": _name(comp_id),
            "title": comp.title,
            "entry_fee": comp.entry_fee,
            "pool": pool,
            "organizer_share": pool - paid,
            "ranking": [
                {"rank": r["rank"], "user": f"users/{r['user']}", "score": r["score"], "prize": r["prize"]}
                for r in rows
            ],
            "publish_time": tx.now.isoformat(),
            "key_id": rt.signer.key_id,
        }
        payload = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        comp.results_payload = payload
        comp.results_signature = rt.signer.sign(RESULTS_CONTEXT + payload)
        comp.results_key_id = rt.signer.key_id
        _transition(tx, comp, RESULTS_PUBLISHED, f"results published ({len(rows)} ranked, {paid} paid)")
        _notify_many(tx, comp, [(r.id, r.user_id) for r in confirmed.values()], RESULTS)
        _run_chain(tx, comp, settings_of(rt).max_chain)
        comp.save()
        signed = _signed(rt, comp)
    return CompetitionView(comp, _transitions_of([comp.id])[comp.id]), signed


def _signed(rt: Runtime, comp: Competition) -> SignedResults:
    return SignedResults(
        bytes(comp.results_payload), bytes(comp.results_signature), comp.results_key_id, rt.signer.public_key
    )


def get_results(rt: Runtime, who: Principal, comp_id: str) -> SignedResults:
    comp = _get_visible(who, comp_id)
    if comp.results_payload is None:
        raise _precondition("results have not been published", "NO_RESULTS", comp)
    return _signed(rt, comp)


@dataclass(frozen=True)
class LeaderboardRow:
    result: CompetitionResult
    display_name: str


def leaderboard(who: Principal, comp_id: str, page: PageRequest) -> Page[LeaderboardRow]:
    comp = _get_visible(who, comp_id)
    if comp.results_payload is None:
        raise _precondition("results have not been published", "NO_RESULTS", comp)
    query = (
        CompetitionResult.select(CompetitionResult, User)
        .join(User)
        .where(CompetitionResult.competition == comp_id)
    )
    found = keyset_page(query, CompetitionResult.rank, page, filters={"c": comp_id})
    return Page([LeaderboardRow(r, r.user.display_name) for r in found.items], found.next_token)


def notifications_of(comp_id: str, kind: str = "") -> list[CompetitionNotification]:
    query = CompetitionNotification.select().where(CompetitionNotification.competition == comp_id)
    if kind:
        query = query.where(CompetitionNotification.kind == kind)
    return list(query.order_by(CompetitionNotification.id))
