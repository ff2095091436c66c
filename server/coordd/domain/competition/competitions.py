"""Competitions as an organizer sees them: create, read, list, change, publish, cancel."""

from __future__ import annotations

from datetime import timedelta

from coordd.core.errors import FailedPrecondition, FieldViolation, InvalidArgument, Violations
from coordd.core.paging import Page, PageRequest
from coordd.core.principal import Principal
from coordd.domain.competition.common import emit_competition, get_visible, listing, lock_owned, precondition
from coordd.domain.competition.lifecycle import close_out, due_time, run_chain
from coordd.domain.competition.settings import settings_of
from coordd.domain.competition.states import CANCELLED, DRAFT, RESULTS_PUBLISHED, SEATING, TERMINAL
from coordd.domain.competition.validation import check_times, validate
from coordd.domain.competition.views import CompetitionInput, CompetitionView
from coordd.domain.competition.waitlist import promote
from coordd.runtime import Runtime
from coordd.store.competition import queries
from coordd.store.competition.models import Competition

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
    "team_min_size": "team_min",
    "team_max_size": "team_max",
    "team_formation_deadline": "team_deadline",
}
# Changing these after publication would change the deal registrants accepted (and the
# scheduler's due times and reminder time, which publication fixes).
DRAFT_ONLY = frozenset(
    {
        "open_time",
        "close_time",
        "start_time",
        "end_time",
        "entry_fee",
        "prize_split",
        "reminder_lead_s",
        "team_min",
        "team_max",
        "team_deadline",
    }
)


def _view(comp: Competition) -> CompetitionView:
    return CompetitionView(comp, queries.transitions_of([comp.id])[comp.id])


def create_competition(rt: Runtime, who: Principal, data: CompetitionInput) -> CompetitionView:
    s = settings_of(rt)
    now = rt.now()
    v = Violations()
    validate(v, data, now)
    v.raise_if_any()
    comp = Competition(
        owner=who.user_id,
        title=data.title.strip(),
        description=data.description,
        tags=list(data.tags),
        tags_text=queries.tags_text(data.tags),
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
        team_min=data.team_min,
        team_max=data.team_max,
        team_deadline=data.team_deadline,
    )
    check_times(v, comp)
    v.raise_if_any()
    with rt.store.write() as tx:
        comp.create_time = comp.update_time = tx.now
        queries.insert_competition(comp)
        emit_competition(tx, comp, "created", {"owner": f"users/{who.user_id}"})
    return CompetitionView(comp, [])


def get_competition(who: Principal, comp_id: str) -> CompetitionView:
    return _view(get_visible(who, comp_id))


def list_competitions(
    who: Principal, page: PageRequest, state: str, tag: str, owner_id: str
) -> Page[CompetitionView]:
    found = queries.competitions_page(page, who.user_id, who.is_admin, state, tag, owner_id)
    transitions = queries.transitions_of([c.id for c in found.items])
    return Page([CompetitionView(c, transitions[c.id]) for c in found.items], found.next_token)


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
    validate(v, data, rt.now(), fields)
    v.raise_if_any()
    with rt.store.write() as tx:
        comp = lock_owned(rt, who, comp_id)
        if comp.state in TERMINAL:
            raise precondition(f"a {comp.state} competition cannot change", "COMPETITION_FINISHED", comp)
        late = sorted(f for f in fields if f in DRAFT_ONLY and comp.publish_time is not None)
        if late:
            raise precondition(
                f"only an unpublished competition may change {listing(late)}", "COMPETITION_PUBLISHED", comp
            )
        if "capacity" in fields and comp.state not in SEATING and data.capacity != comp.capacity:
            raise precondition(
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
            comp.tags_text = queries.tags_text(comp.tags)
        check_times(v, comp)
        v.raise_if_any()
        if comp.publish_time is not None:
            comp.due_time = due_time(comp)
        comp.update_time = tx.now
        promote(tx, comp)
        queries.save_competition(comp)
        emit_competition(tx, comp, "updated", {"fields": sorted(fields)})
    return _view(comp)


def publish_competition(rt: Runtime, who: Principal, comp_id: str) -> CompetitionView:
    """DRAFT -> published: the scheduler opens it at registration_open_time (now, if past)."""
    with rt.store.write() as tx:
        comp = lock_owned(rt, who, comp_id)
        if comp.state != DRAFT or comp.publish_time is not None:
            if comp.publish_time is not None and comp.state != CANCELLED:
                # Publishing twice is not an error: the call is naturally idempotent.
                return _view(comp)
            raise precondition(f"only a DRAFT can be published, this one is {comp.state}", "NOT_DRAFT", comp)
        if comp.close_time <= tx.now:
            raise precondition(
                "registration_close_time has passed: move the dates first", "REGISTRATION_WINDOW_PASSED", comp
            )
        comp.publish_time = tx.now
        comp.update_time = tx.now
        lead = timedelta(seconds=comp.reminder_lead_s)
        comp.reminder_time = comp.start_time - lead if comp.reminder_lead_s > 0 else None
        emit_competition(tx, comp, "published")
        run_chain(tx, comp, settings_of(rt).max_chain)
        queries.save_competition(comp)
    return _view(comp)


def cancel_competition(rt: Runtime, who: Principal, comp_id: str, reason: str) -> CompetitionView:
    if len(reason) > 500:
        raise InvalidArgument(
            "reason: at most 500 characters", violations=[FieldViolation("reason", "at most 500 characters")]
        )
    with rt.store.write() as tx:
        comp = lock_owned(rt, who, comp_id)
        if comp.state in TERMINAL or comp.state == RESULTS_PUBLISHED:
            raise precondition(
                f"a competition in {comp.state} cannot be cancelled", "COMPETITION_FINISHED", comp
            )
        by = "admin" if who.user_id != comp.owner_id else "owner"
        close_out(tx, comp, CANCELLED, f"cancelled by {by}" + (f": {reason}" if reason else ""))
        queries.save_competition(comp)
    return _view(comp)
