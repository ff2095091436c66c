"""Dependencies and pending jobs: a job may list parents (the submitter's own jobs, existing
before it, so the graph has no cycle); it stays pending until every parent succeeded and its
schedule time (or a snooze) has come, then it is released to the queue. A parent that fails
or is cancelled finishes its pending dependants the same way, refunded (transitions)."""

from __future__ import annotations

from collections import Counter

from coordd.core.errors import FailedPrecondition, NotFound
from coordd.domain.jobs.fairness import assign as assign_fair_seq
from coordd.domain.jobs.states import CANCELLED, FAILED, PENDING, QUEUE_KEY, SUCCEEDED
from coordd.domain.jobs.transitions import enqueue_fields
from coordd.store.db import Tx
from coordd.store.jobs import graph, queries, writes
from coordd.store.jobs.models import Job


def link_parents(tx: Tx, job: Job, parent_ids: tuple[str, ...]) -> list[tuple[str, str]]:
    """Checks the parents of the new `job` (locked, in id order, so two submissions naming
    the same parents cannot deadlock) and sets its `parents_left`; returns the edges to the
    parents that have not succeeded yet (a succeeded parent needs none)."""
    edges: list[tuple[str, str]] = []
    for parent_id in sorted(parent_ids):
        parent = queries.lock_job(parent_id)
        if parent is None or parent.submitter != job.submitter:
            raise NotFound(f"parent jobs/{parent_id} not found", metadata={"resource": f"jobs/{parent_id}"})
        if parent.state == SUCCEEDED:
            continue
        if parent.state in (FAILED, CANCELLED):
            raise FailedPrecondition(
                f"parent jobs/{parent_id} is {parent.state}: this job could never run",
                reason="PARENT_FINISHED",
                metadata={"parent": f"jobs/{parent_id}"},
            )
        edges.append((parent_id, job.id))
    job.parents = list(parent_ids)
    job.parents_left = len(edges)
    return edges


def record_edges(edges: list[tuple[str, str]]) -> None:
    """Writes the edges of new jobs (after their rows) and marks their parents."""
    graph.insert_edges(edges)
    graph.mark_has_children(sorted({parent for parent, _ in edges}))


def release(tx: Tx, job: Job) -> None:
    """A pending job whose parents all succeeded and whose time has come -> queued; its
    schedule-to-start deadline counts from now, and its fair share too (a backlog scheduled
    for one moment does not jump ahead of everyone else's jobs)."""
    enqueue_fields(job, tx.now, min(job.run_after, tx.now))
    assign_fair_seq(job.submitter, [job])


def parents_succeeded(tx: Tx, parent_ids: list[str]) -> list[str]:
    """After `parent_ids` succeeded: each pending child counts them off; those with none left
    whose time has come are released at once (the others by `release_due`). Returns the
    released jobs' ids."""
    counts = Counter(child for _, child in graph.children_of(parent_ids))
    released: list[str] = []
    for child_id in sorted(counts):
        child = queries.lock_job(child_id)
        if child is None or child.state != PENDING:
            continue
        child.parents_left = max(0, child.parents_left - counts[child_id])
        if child.parents_left == 0 and child.run_after <= tx.now:
            release(tx, child)
            writes.write_released(child)
            released.append(child.id)
        else:
            writes.write_parents_left(child)
    if released:
        names = [f"jobs/{j}" for j in released]
        tx.emit("jobs.released", names[0], {"jobs": names, "watch_keys": [*names, QUEUE_KEY]})
    return released


def release_due(tx: Tx, limit: int) -> int:
    """The scheduler's part: pending jobs with no parent left whose schedule time or snooze
    has come (partial index `job_pending_due`) are released; how many."""
    names: list[str] = []
    for job_id in graph.due_pending_ids(tx.now, limit):
        job = queries.lock_job(job_id)
        if job is None or job.state != PENDING or job.parents_left or job.run_after > tx.now:
            continue
        release(tx, job)
        writes.write_released(job)
        names.append(f"jobs/{job.id}")
    if names:
        tx.emit("jobs.released", names[0], {"jobs": names, "watch_keys": [*names, QUEUE_KEY]})
    return len(names)
