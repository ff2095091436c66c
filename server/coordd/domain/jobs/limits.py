"""Concurrency caps: at most N running jobs per submitter (one user, or `*`: each
submitter, unless that user has a cap of their own), per model ref, per label. Enforced by
the claim: while any cap exists, a claim locks the caps (PostgreSQL: FOR UPDATE, so capped
claims on every replica take turns), counts the running jobs they cover, skips the jobs of
full ones in SQL and takes the rest in claim order while each cap has room. Without caps the
claim is its usual single statement (plus one read of the empty cap table)."""

from __future__ import annotations

from coordd.core.errors import FieldViolation, InvalidArgument
from coordd.domain.jobs.specs import Worker
from coordd.runtime import Runtime
from coordd.store.db import Tx
from coordd.store.jobs import limits as store
from coordd.store.jobs.limits import Limit

SCOPES = ("submitter", "model", "label")
MAX_RUNNING = 1_000_000
# A capped claim reads this many candidates per job asked for, at most (their order is the
# claim order; jobs of a cap that fills up meanwhile are passed over).
CANDIDATES_PER_JOB = 4


def set_limit(rt: Runtime, scope: str, key: str, max_running: int) -> list[Limit]:
    """Creates, changes or (max_running 0) removes a cap; every cap after the change."""
    v: list[FieldViolation] = []
    if scope not in SCOPES:
        v.append(FieldViolation("scope", "submitter, model or label"))
    if not key or len(key) > 500 or not key.isprintable() or (key == "*" and scope != "submitter"):
        v.append(FieldViolation("key", "1..500 printable characters; `*` only for the submitter scope"))
    if not 0 <= max_running <= MAX_RUNNING:
        v.append(FieldViolation("max_running", f"0 (remove) .. {MAX_RUNNING}"))
    if v:
        raise InvalidArgument(
            "the cap is invalid: " + "; ".join(f"{x.field}: {x.description}" for x in v), violations=v
        )
    with rt.store.write() as tx:
        if max_running:
            store.set_limit(scope, key, max_running)
        else:
            store.delete_limit(scope, key)
        tx.emit("job.limit_set", f"jobLimits/{scope}/{key}", {"max_running": max_running})
        return store.all_limits(rt.store)


def list_limits(rt: Runtime) -> list[Limit]:
    with rt.store.read():
        return store.all_limits(rt.store)


def any_limit(rt: Runtime) -> bool:
    return bool(store.all_limits(rt.store))


def capped_ids(
    rt: Runtime, tx: Tx, worker: Worker, limit: int, job_overhead: int, only_job: str | None
) -> list[str]:
    """The jobs a claim of `limit` may lease under the caps, in claim order, within the
    worker's reply budget (the claim statement then leases exactly these)."""
    locked = store.all_limits(rt.store, lock=True)
    if not locked:
        return []
    counts = store.running_counts(rt.store, locked)
    caps = {(lim.scope, lim.key): lim.max_running for lim in locked}
    star = caps.get(("submitter", "*"))

    def cap_of(scope: str, key: str) -> int | None:
        if (scope, key) in caps:
            return caps[(scope, key)]
        return star if scope == "submitter" else None

    room: dict[tuple[str, str], int] = {}

    def left(scope: str, key: str) -> int | None:
        cap = cap_of(scope, key)
        if cap is None:
            return None
        return room.setdefault((scope, key), cap - counts.get((scope, key), 0))

    full: dict[str, list[str]] = {scope: [] for scope in SCOPES}
    for scope, key in caps:
        if key != "*" and (left(scope, key) or 0) <= 0:
            full[scope].append(key)
    if star is not None:
        full["submitter"].extend(
            key for (scope, key) in counts if scope == "submitter" and (left("submitter", key) or 0) <= 0
        )
    candidates = store.capped_candidates(
        rt.store,
        tx.now,
        worker.labels,
        worker.gpus,
        limit * CANDIDATES_PER_JOB,
        job_overhead,
        sorted(set(full["submitter"])),
        full["model"],
        full["label"],
        only_job,
    )
    chosen: list[str] = []
    total = 0
    for c in candidates:
        if c.size > worker.reply_budget:
            continue  # never fits: left to the undeliverable sweep
        if total + c.size > worker.reply_budget:
            break
        scopes = [("submitter", c.submitter), ("model", c.model_ref), *(("label", x) for x in c.labels)]
        rooms = [(s, left(*s)) for s in scopes]
        if any(r is not None and r <= 0 for _, r in rooms):
            continue
        for s, r in rooms:
            if r is not None:
                room[s] = r - 1
        chosen.append(c.id)
        total += c.size
        if len(chosen) == limit:
            break
    return chosen
