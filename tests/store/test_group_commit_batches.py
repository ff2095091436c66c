"""GroupCommit with `batch_work`: the whole batch at once, one outcome per item, RetryBatch,
and `submit_many` (one caller handing in several items, e.g. an event loop's gathered calls)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import peewee
import pytest

from coordd.core.errors import Aborted
from coordd.store.auth.models import User
from coordd.store.db import Store, Tx
from coordd.store.group_commit import MAX_RETRIES, GroupCommit, RetryBatch
from coordd.store.migrations import migrate


@pytest.fixture
def store(settings_factory: Any) -> Iterator[Store]:
    s = Store(settings_factory())
    migrate(s)
    try:
        yield s
    finally:
        s.close()


def _email() -> str:
    return f"{uuid.uuid4().hex}@example.com"


def _insert(tx: Tx, email: str) -> None:
    User.create(
        email=email,
        email_key=email,
        display_name="x",
        password_hash="!",
        roles="participant",
        create_time=tx.now,
    )


def _stored(emails: list[str]) -> int:
    return User.select().where(User.email.in_(emails)).count()


def test_batch_work_gets_every_item_in_one_transaction_and_hands_out_each_outcome(store):
    seen: list[tuple[int, list[str]]] = []

    def work(tx: Tx, key: str, items: list[str]) -> list[Any]:
        seen.append((id(tx), list(items)))
        for email in items:
            if not email.startswith("bad"):
                _insert(tx, email)
        return [ValueError(e) if e.startswith("bad") else e.upper() for e in items]

    grouped: GroupCommit[str, str, str] = GroupCommit(batch_work=work, max_batch=64)
    items = [_email(), f"bad{_email()}", _email()]
    outcomes = grouped.submit_many(store, "k", items)
    assert outcomes[0] == items[0].upper() and outcomes[2] == items[2].upper()
    assert isinstance(outcomes[1], ValueError)
    assert len(seen) == 1 and seen[0][1] == items
    assert _stored(items) == 2


def test_retry_batch_rolls_back_and_runs_the_batch_again(store):
    attempts: list[int] = []
    items = [_email(), _email()]

    def work(tx: Tx, key: str, batch: list[str]) -> list[Any]:
        for email in batch:
            _insert(tx, email)
        attempts.append(len(attempts))
        if len(attempts) == 1:
            raise RetryBatch()  # what the first attempt wrote must be gone
        return list(batch)

    grouped: GroupCommit[str, str, str] = GroupCommit(batch_work=work, max_batch=8)
    assert grouped.submit_many(store, "k", items) == items
    assert attempts == [0, 1] and _stored(items) == 2


def test_a_batch_that_keeps_asking_for_a_retry_fails_every_caller_and_stores_nothing(store):
    calls: list[int] = []
    items = [_email()]

    def work(tx: Tx, key: str, batch: list[str]) -> list[Any]:
        _insert(tx, batch[0])
        calls.append(1)
        raise RetryBatch() from KeyError("still conflicting")

    grouped: GroupCommit[str, str, str] = GroupCommit(batch_work=work, max_batch=8)
    with pytest.raises(KeyError):
        grouped.submit(store, "k", items[0])
    assert len(calls) == MAX_RETRIES + 1 and _stored(items) == 0


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_write_conflict_that_outlasts_the_retries_is_aborted_for_the_caller_to_retry(store, backend):
    """A batch that meets another transaction's row on every run: its callers get ABORTED
    (CONCURRENT_CONFLICT, worth sending again), not the database's unique-key error."""
    taken = _email()
    with store.write() as tx:
        _insert(tx, taken)
    items = [_email()]

    def work(tx: Tx, key: str, batch: list[str]) -> list[Any]:
        _insert(tx, batch[0])
        try:
            with store.db.atomic():
                _insert(tx, taken)
        except peewee.IntegrityError as exc:
            raise RetryBatch() from exc
        return list(batch)

    grouped: GroupCommit[str, str, str] = GroupCommit(batch_work=work, max_batch=8)
    with pytest.raises(Aborted) as info:
        grouped.submit(store, "k", items[0])
    assert info.value.reason == "CONCURRENT_CONFLICT" and _stored(items) == 0


def test_retries_that_settle_more_items_each_time_go_on_past_the_retry_limit(store):
    """Each run answers one more caller (say from a record another process wrote meanwhile)
    and asks for a run again: it is not stuck, so it runs until every caller is settled."""
    items = [_email() for _ in range(MAX_RETRIES + 3)]
    runs: list[int] = []

    def work(tx: Tx, key: str, batch: list[str]) -> list[Any]:
        runs.append(1)
        for email in batch:
            _insert(tx, email)
        if len(runs) < len(batch):
            raise RetryBatch(progressed=True)
        return list(batch)

    grouped: GroupCommit[str, str, str] = GroupCommit(batch_work=work, max_batch=16)
    assert grouped.submit_many(store, "k", items) == items
    assert len(runs) == len(items) and _stored(items) == len(items)


def test_a_batch_asking_again_and_again_without_a_cause_is_aborted_for_the_caller_to_retry(store):
    def work(tx: Tx, key: str, batch: list[str]) -> list[Any]:
        raise RetryBatch()

    grouped: GroupCommit[str, str, str] = GroupCommit(batch_work=work, max_batch=8)
    with pytest.raises(Aborted) as info:
        grouped.submit(store, "k", _email())
    assert info.value.reason == "CONCURRENT_CONFLICT"


def test_an_error_raised_by_batch_work_fails_the_whole_batch(store):
    def work(tx: Tx, key: str, batch: list[str]) -> list[Any]:
        for email in batch:
            _insert(tx, email)
        raise RuntimeError("broken")

    grouped: GroupCommit[str, str, str] = GroupCommit(batch_work=work, max_batch=8)
    items = [_email(), _email()]
    outcomes = grouped.submit_many(store, "k", items)
    assert all(isinstance(o, RuntimeError) for o in outcomes) and _stored(items) == 0


def test_submit_many_joins_other_callers_and_splits_at_max_batch(store):
    """One caller's 5 items and 3 single callers, all queued behind a running batch: they are
    cut in arrival order into batches of at most max_batch, and everyone gets its answer."""
    inside, release = threading.Event(), threading.Event()
    batches: list[list[str]] = []

    def work(tx: Tx, key: str, batch: list[str]) -> list[Any]:
        if batch == ["gate"]:
            inside.set()
            assert release.wait(30)
        batches.append(list(batch))
        return [f"ok:{item}" for item in batch]

    grouped: GroupCommit[str, str, str] = GroupCommit(batch_work=work, max_batch=3)
    results: dict[str, Any] = {}

    def one(item: str) -> None:
        results[item] = grouped.submit(store, "k", item)

    def many(items: list[str]) -> None:
        results["many"] = grouped.submit_many(store, "k", items)

    gate = threading.Thread(target=one, args=("gate",))
    gate.start()
    assert inside.wait(30)
    queued = grouped._groups["k"].queue
    threads = [threading.Thread(target=one, args=("a",))]
    threads[0].start()
    while len(queued) < 1:
        inside.wait(0.001)
    threads.append(threading.Thread(target=many, args=(["m1", "m2", "m3", "m4", "m5"],)))
    threads[1].start()
    while len(queued) < 6:
        inside.wait(0.001)
    threads.append(threading.Thread(target=one, args=("b",)))
    threads[2].start()
    while len(queued) < 7:
        inside.wait(0.001)
    release.set()
    for t in [gate, *threads]:
        t.join(30)
    assert batches == [["gate"], ["a", "m1", "m2"], ["m3", "m4", "m5"], ["b"]]
    assert results["many"] == ["ok:m1", "ok:m2", "ok:m3", "ok:m4", "ok:m5"]
    assert (results["a"], results["b"], results["gate"]) == ("ok:a", "ok:b", "ok:gate")


def test_work_and_batch_work_are_exclusive():
    with pytest.raises(ValueError):
        GroupCommit(max_batch=1)
    with pytest.raises(ValueError):
        GroupCommit(lambda tx, k, i: i, batch_work=lambda tx, k, items: items, max_batch=1)
