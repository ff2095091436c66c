"""SubmitJob calls gathered on the event loop (api/gather.py), run as one batch:
one transaction, one commit, and for the common case one multi-row INSERT (COPY on
PostgreSQL) of each submitter's jobs and one ledger batch for their budget holds.

Each caller still gets its own answer and its own error:
- a schedule_time too far ahead is refused before anything is written, for that call only;
- the jobs of one submitter go through `insert_submissions` together, in arrival order, so
  their fair_seq values are consecutive in arrival order and a repeated unique key in the
  batch is a duplicate of the first one (ALREADY_EXISTS, or the existing job when asked);
- when anything in that shared step fails (a submitter lacking funds for the sum, a missing
  parent), it is rolled back to its savepoint and every call of the batch runs alone, each
  in its own savepoint, exactly as one call would: the failure is only its own.
A deadlock or unique-key race with another transaction on PostgreSQL rolls the whole batch
back and runs it again (store/group_commit.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coordd.core.principal import Principal
from coordd.domain.jobs.specs import JobSpec
from coordd.domain.jobs.states import QUEUE_KEY, QUEUED
from coordd.domain.jobs.submission import Submitted, check_schedule, insert_submissions
from coordd.domain.jobs.unique import duplicate_error
from coordd.runtime import Runtime
from coordd.store.db import Tx, conflict_of
from coordd.store.group_commit import GroupCommit

# Calls per batch, at most (the gatherer hands over at most this many at once).
MAX_BATCH = 100


@dataclass(frozen=True)
class Ask:
    """One SubmitJob call in a batch."""

    rt: Runtime
    who: Principal
    spec: JobSpec


Outcome = Submitted | BaseException


def submit_gathered(rt: Runtime, asks: list[Ask]) -> list[Outcome]:
    """Runs the calls in shared transactions; one outcome per call, in order: its `Submitted`
    (committed) or its error."""
    return _GROUPS.submit_many(rt.store, id(rt.store), asks)


def _batch(tx: Tx, _key: int, asks: list[Ask]) -> list[Outcome]:
    rt = asks[0].rt
    out: list[Outcome | None] = [None] * len(asks)
    for i, ask in enumerate(asks):
        try:
            check_schedule(tx, [ask.spec])
        except Exception as exc:
            out[i] = exc
    todo = [i for i in range(len(asks)) if out[i] is None]
    if not todo:
        return out  # type: ignore[return-value]
    mark = len(tx.pending_events)
    try:
        with rt.store.db.atomic():  # a savepoint
            _together(rt, tx, asks, todo, out)
    except Exception as exc:
        del tx.pending_events[mark:]
        if rt.store.is_postgres and conflict_of(exc):
            raise  # the whole batch runs again (GroupCommit)
        for i in todo:
            out[i] = _alone(rt, tx, asks[i])
    # The `job.submitted` event of each new job, as one call emits it (all stored in one
    # statement with the commit: store/event_log.py).
    for i, o in enumerate(out):
        if isinstance(o, Submitted) and not o.existed:
            tx.emit(*_event(asks[i].spec, o))
    return out  # type: ignore[return-value]


def _event(spec: JobSpec, item: Submitted) -> tuple[str, str, dict[str, Any]]:
    watch = [QUEUE_KEY] if item.job.state == QUEUED else []
    return ("job.submitted", f"jobs/{item.job.id}", {"budget": spec.budget, "watch_keys": watch})


def _together(rt: Runtime, tx: Tx, asks: list[Ask], todo: list[int], out: list[Outcome | None]) -> None:
    """Each submitter's calls through one `insert_submissions`, in arrival order."""
    by_submitter: dict[str, list[int]] = {}
    for i in todo:
        by_submitter.setdefault(asks[i].who.user_id, []).append(i)
    for submitter, indexes in by_submitter.items():
        done = insert_submissions(rt, tx, submitter, [asks[i].spec for i in indexes])
        for i, item in zip(indexes, done, strict=True):
            out[i] = _answer(asks[i].spec, item)


def _alone(rt: Runtime, tx: Tx, ask: Ask) -> Outcome:
    """One call in its own savepoint: its failure undoes only itself."""
    mark = len(tx.pending_events)
    try:
        with rt.store.db.atomic():
            [item] = insert_submissions(rt, tx, ask.who.user_id, [ask.spec])
            answer = _answer(ask.spec, item)
        return answer
    except Exception as exc:
        del tx.pending_events[mark:]
        if rt.store.is_postgres and conflict_of(exc):
            raise
        return exc


def _answer(spec: JobSpec, item: Submitted) -> Outcome:
    """What `submission.submit_one` answers without a hand-over (its event is stored after)."""
    if item.existed and (spec.unique is None or not spec.unique.return_existing):
        return duplicate_error(item.job)
    return item


_GROUPS: GroupCommit[int, Ask, Submitted] = GroupCommit(batch_work=_batch, max_batch=MAX_BATCH)
