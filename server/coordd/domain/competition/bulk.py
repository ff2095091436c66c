"""A batch of registrations for one competition, in one transaction (registration.py groups
the callers that arrive together, store/group_commit.py runs the batch).

Newcomers to a free competition without teams, the common case, are handled as ONE group:
one UPDATE of the competition row claims `min(n, free)` seats and hands the rest consecutive
waitlist numbers (store/competition/bulk.py: `claim_seats`), then one multi-row INSERT each
writes the registrations, their confirmation records, their events and, for calls with an
idempotency key, the finished idempotency records with the sealed responses. About ten
statements per batch, whatever its size, instead of about ten per registration.

Everybody else (a user registered already, a user twice in the batch, a paid or team
competition, a closed window) goes one by one through `registration.register_in`, each in
its own savepoint, which also explains every refusal. Order: the newcomers in arrival order,
then the others in arrival order; positions and waitlist numbers are exact either way.

A call whose idempotency key turns out to be taken (a concurrent call with the same key
committed first) gets that call's stored response; since its own effect was already written,
the batch is rolled back and run again with that call answered from the record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from coordd.core.errors import InvalidArgument
from coordd.core.ids import new_id
from coordd.core.principal import Principal
from coordd.domain import idempotency as idem
from coordd.domain.competition.common import registration_event
from coordd.domain.competition.notifications import confirm_new
from coordd.domain.competition.states import CONFIRMED, WAITLISTED
from coordd.domain.competition.views import RegistrationView
from coordd.domain.competition.waitlist import late_reminder, position
from coordd.runtime import Runtime
from coordd.store.competition import bulk as store
from coordd.store.competition import queries
from coordd.store.competition.models import Registration
from coordd.store.db import Tx, conflict_of, flush
from coordd.store.group_commit import RetryBatch


@dataclass
class Ask:
    """One caller's registration in a batch."""

    rt: Runtime
    who: Principal
    # The call's idempotency key (claimed in this transaction) and how its reply is built.
    keyed: idem.InCall | None = None
    render: Callable[[RegistrationView], bytes] | None = None
    # Set when a batch found the key taken: answer from the stored record.
    taken: bool = False
    # Set when a batch's one-statement insert met a row another process wrote meanwhile: the
    # run again registers this caller alone, where such a row is the answer.
    raced: bool = False
    # Set when a batch's transaction met a conflict: the run again looks for the key first
    # (PostgreSQL skips that look on a first run: idempotency.looks_first).
    look: bool = False


@dataclass(frozen=True)
class Registered:
    """A batch's answer to one caller: its registration, or (`replay`) the response stored by
    the first call with its idempotency key."""

    view: RegistrationView | None
    replay: bytes = b""
    # The idempotency record with this answer was written in the transaction.
    stored: bool = False
    # Then the response as the record holds it (`Ask.render` of the view): the reply as is.
    reply: bytes = b""


Outcome = Registered | BaseException
OneByOne = Callable[[Tx, str, Principal], RegistrationView]


def run_batch(tx: Tx, comp_id: str, asks: list[Ask], one_by_one: OneByOne) -> list[Outcome]:
    out: list[Outcome | RegistrationView | None] = [None] * len(asks)
    for i, ask in enumerate(asks):
        if ask.taken and ask.keyed is not None:
            out[i] = _from_record(ask)
    _replays(tx, asks, out)
    # The same key twice in one batch (one user retrying at once): the later ones share the first's answer.
    follows: dict[int, int] = {}
    first: dict[tuple[str, str], int] = {}
    for i, ask in enumerate(asks):
        if out[i] is None and ask.keyed is not None:
            follows_i = first.setdefault((ask.keyed.scope, ask.keyed.key), i)
            if follows_i != i:
                follows[i] = follows_i
    todo = [i for i in range(len(asks)) if out[i] is None and i not in follows]
    fast, slow, with_channels = _split(comp_id, [asks[i] for i in todo], todo)
    if fast:
        try:
            views = _newcomers(tx, comp_id, [asks[i] for i in fast], with_channels)
            if views is not None and slow:
                flush()  # their deferred INSERT now: its error is theirs, not the first slow call's
        except queries.IntegrityError as exc:
            # One of them registered meanwhile (another process, between our read of the
            # states and the insert). Run again with these callers one by one: each alone
            # meets the other's row and answers with it, so the run again cannot race again.
            # (On PostgreSQL their INSERT waits for the COMMIT, which reports the race
            # instead: registration._conflicted does the same from there.)
            for i in fast:
                asks[i].raced = True
            raise RetryBatch(progressed=True) from exc
        if views is None:
            slow = sorted(fast + slow)
        else:
            out_views = dict(zip(fast, views, strict=True))
            for i, view in out_views.items():
                out[i] = view
    for i in slow:
        out[i] = _alone(tx, comp_id, asks[i], one_by_one)
    return _answers(tx, asks, out, follows)


def _split(comp_id: str, asks: list[Ask], indexes: list[int]) -> tuple[list[int], list[int], set[str]]:
    """(newcomers, the others, the users with a live notification channel): users with a
    registration already, or twice in the batch, or raced in an earlier run of the batch, go
    alone. One read tells both who is registered and who has a channel."""
    users = list(dict.fromkeys(a.who.user_id for a in asks))
    known, with_channels = store.states_and_channels(comp_id, users) if users else ({}, set())
    seen: set[str] = set()
    fast: list[int] = []
    slow: list[int] = []
    for i, ask in zip(indexes, asks, strict=True):
        user = ask.who.user_id
        if user in known or user in seen or ask.raced:
            slow.append(i)
        else:
            seen.add(user)
            fast.append(i)
    return fast, slow, with_channels


def _newcomers(
    tx: Tx, comp_id: str, asks: list[Ask], with_channels: set[str]
) -> list[RegistrationView] | None:
    """Seats (then waitlist places) for users without a registration, in one claim; None when
    the competition takes no batch claim (paid, teams, closed, missing)."""
    now = tx.now
    claimed = store.claim_seats(comp_id, len(asks), now)
    if claimed is None:
        return None
    comp = claimed.competition
    regs: list[Registration] = []
    views: list[RegistrationView] = []
    for j, ask in enumerate(asks):
        seat = j < claimed.seats
        place = j - claimed.seats  # 0-based among those who wait
        reg = Registration(
            id=new_id(),
            competition=comp_id,
            user=ask.who.user_id,
            state=CONFIRMED if seat else WAITLISTED,
            waitlist_seq=None if seat else claimed.first_seq + place,
            fee_held=0,
            create_time=now,
            update_time=now,
            confirm_time=now if seat else None,
        )
        regs.append(reg)
        views.append(RegistrationView(reg, 0 if seat else claimed.entries_before + place + 1, created=True))
    store.insert_registrations(regs)
    seated = regs[: claimed.seats]
    confirm_new(tx, comp, seated, with_channels)
    for reg in seated:
        late_reminder(tx, comp, reg)
    for reg in regs:
        tx.emit(*registration_event(reg, "created"))
    return views


_RUN_AGAIN = frozenset({"deadlock", "serialization failure"})


def _alone(tx: Tx, comp_id: str, ask: Ask, one_by_one: OneByOne) -> RegistrationView | BaseException:
    """One registration in its own savepoint: its failure undoes only itself."""
    mark = len(tx.pending_events)
    try:
        with ask.rt.store.db.atomic():
            return one_by_one(tx, comp_id, ask.who)
    except Exception as exc:
        del tx.pending_events[mark:]
        if ask.rt.store.is_postgres and conflict_of(exc) in _RUN_AGAIN:
            # A deadlock or serialization failure with another transaction (another process
            # registering the same users): not this call's answer. The whole batch rolls back
            # and runs again (store/group_commit.py); before, it reached the caller as INTERNAL.
            raise
        if not isinstance(exc, queries.IntegrityError):
            return exc
        # The same user twice in flight: the first one's row is the answer.
        reg = queries.registration_of(comp_id, ask.who.user_id)
        if reg is None:
            return exc
        return RegistrationView(reg, position(reg), created=False)


def _answers(
    tx: Tx, asks: list[Ask], out: list[Outcome | RegistrationView | None], follows: dict[int, int]
) -> list[Outcome]:
    """Writes the idempotency records of the keyed answers (one statement) and hands out."""
    rendered: dict[int, bytes] = {}
    for i, ask in enumerate(asks):
        view = out[i]
        keyed = ask.keyed is not None and ask.render is not None
        if keyed and isinstance(view, RegistrationView) and i not in follows:
            assert ask.render is not None
            rendered[i] = ask.render(view)
    if rendered:
        rt = asks[next(iter(rendered))].rt
        taken = idem.write_in_call(rt, [(asks[i].keyed, data) for i, data in rendered.items()], tx.now)  # type: ignore[misc]
        if taken:
            for ask in asks:
                if ask.keyed is not None and (ask.keyed.scope, ask.keyed.key) in taken:
                    ask.taken = True
            # Those callers are answered from the records next time: the run again settles more.
            raise RetryBatch(progressed=True)
    answers: list[Outcome] = []
    for i, ask in enumerate(asks):
        got = out[follows[i]] if i in follows else out[i]
        if i in follows and isinstance(got, RegistrationView):
            leader = asks[follows[i]]
            if ask.keyed is not None and leader.keyed is not None and ask.keyed.digest != leader.keyed.digest:
                got = _reused(ask.keyed)
            else:
                got = Registered(None, replay=rendered.get(follows[i], b""), stored=True)
        if isinstance(got, RegistrationView):
            got = Registered(got, stored=i in rendered, reply=rendered.get(i, b""))
        assert got is not None
        answers.append(got)
    return answers


def _replays(tx: Tx, asks: list[Ask], out: list[Outcome | RegistrationView | None]) -> None:
    """Keys used before (a retry): their stored response, or the error a retry gets; one
    statement for the batch, before anything is written."""
    keyed = [(i, ask) for i, ask in enumerate(asks) if ask.keyed is not None and out[i] is None]
    if not keyed:
        return
    rt = keyed[0][1].rt
    if not idem.looks_first(rt):
        keyed = [(i, ask) for i, ask in keyed if ask.look]
        if not keyed:
            return
    found = idem.look_in_call(rt, [ask.keyed for _, ask in keyed], tx.now)  # type: ignore[misc]
    for i, ask in keyed:
        assert ask.keyed is not None
        got = found.get((ask.keyed.scope, ask.keyed.key))
        if isinstance(got, bytes):
            out[i] = Registered(None, replay=got)
        elif got is not None:
            out[i] = got


def _from_record(ask: Ask) -> Outcome:
    assert ask.keyed is not None
    try:
        return Registered(None, replay=idem.answer_from_record(ask.rt, ask.keyed))
    except Exception as exc:
        return exc


def _reused(k: idem.InCall) -> BaseException:
    return InvalidArgument(
        "this idempotency-key was already used with a different request",
        reason="IDEMPOTENCY_KEY_REUSED",
        metadata={"idempotency_key": k.key, "first_method": k.method},
    )
