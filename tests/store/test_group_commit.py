"""GroupCommit: callers of one key share a transaction, each item in its own savepoint."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import peewee
import pytest

from coordd.store.auth.models import User
from coordd.store.db import Store, Tx
from coordd.store.group_commit import GroupCommit
from coordd.store.migrations import migrate
from coordd.store.models import EventLog


@pytest.fixture
def store(settings_factory: Any) -> Iterator[Store]:
    s = Store(settings_factory())
    migrate(s)
    try:
        yield s
    finally:
        s.close()


@dataclass
class Item:
    email: str
    fail: bool = False


@dataclass
class Done:
    email: str
    tx: Tx  # the transaction it ran in (kept, so that `is` tells transactions apart)


def _add_user(tx: Tx, key: str, item: Item) -> Done:
    """Inserts a user and emits an event; a failing item does both first, then raises."""
    User.create(
        email=item.email,
        email_key=item.email,
        display_name=key,
        password_hash="!",
        roles="participant",
        create_time=tx.now,
    )
    tx.emit("test.group_commit", f"users/{item.email}", {"key": key})
    if item.fail:
        raise ValueError(f"{item.email} refused")
    return Done(item.email, tx)


def _email() -> str:
    return f"{uuid.uuid4().hex}@example.com"


def _queued(grouped: GroupCommit[Any, Any, Any], key: str) -> int:
    group = grouped._groups.get(key)
    return len(group.queue) if group is not None else 0


def _wait_for(condition: Callable[[], bool]) -> None:
    pause = threading.Event()
    for _ in range(30_000):
        if condition():
            return
        pause.wait(0.001)
    raise AssertionError("the callers never got there")


def _submit_behind_a_gate(
    store: Store, grouped: GroupCommit[str, Item, Any], key: str, items: list[Item]
) -> list[Any]:
    """Submits `items`, one thread each and in this order, while a first caller's batch is
    still running, so that all of them are queued when the next batch is cut. Returns each
    item's answer (or the exception it raised), in order."""
    gate = Item(_email())
    inside, release = threading.Event(), threading.Event()
    outcomes: list[Any] = [None] * len(items)
    original = grouped.work

    def work(tx: Tx, k: str, item: Item) -> Any:
        if item is gate:
            inside.set()
            assert release.wait(30), "the other callers never queued"
        return original(tx, k, item)

    def call(index: int, item: Item) -> None:
        try:
            outcomes[index] = grouped.submit(store, key, item)
        except Exception as exc:  # handed back to the test
            outcomes[index] = exc

    grouped.work = work
    try:
        threads = [threading.Thread(target=call, args=(-1, gate))]
        outcomes.append(None)  # the gate's, at index -1
        threads[0].start()
        _wait_for(inside.is_set)
        for index, item in enumerate(items):
            threads.append(threading.Thread(target=call, args=(index, item)))
            threads[-1].start()
            _wait_for(lambda n=index + 1: _queued(grouped, key) == n)
        release.set()
        for thread in threads:
            thread.join(30)
    finally:
        grouped.work = original
    assert isinstance(outcomes.pop(), Done)  # the gate's own batch committed
    return outcomes


def test_callers_waiting_together_share_one_transaction_and_get_their_own_answers(store):
    grouped: GroupCommit[str, Item, Done] = GroupCommit(_add_user, max_batch=64)
    items = [Item(_email()) for _ in range(5)]
    outcomes = _submit_behind_a_gate(store, grouped, "k1", items)
    assert [o.email for o in outcomes] == [i.email for i in items]
    assert all(o.tx is outcomes[0].tx for o in outcomes)
    assert User.select().where(User.email.in_([i.email for i in items])).count() == 5
    subjects = {e.subject for e in EventLog.select().where(EventLog.type == "test.group_commit")}
    assert {f"users/{i.email}" for i in items} <= subjects


def test_a_batch_holds_at_most_max_batch_items_and_the_rest_follow_in_order(store):
    grouped: GroupCommit[str, Item, Done] = GroupCommit(_add_user, max_batch=2)
    items = [Item(_email()) for _ in range(5)]
    outcomes = _submit_behind_a_gate(store, grouped, "k2", items)
    assert [o.email for o in outcomes] == [i.email for i in items]
    transactions = [o.tx for o in outcomes]
    assert transactions[0] is transactions[1] and transactions[2] is transactions[3]
    assert transactions[0] is not transactions[2] and transactions[2] is not transactions[4]
    assert transactions[0] is not transactions[4]


def test_a_failing_item_undoes_only_its_own_writes_and_events(store):
    grouped: GroupCommit[str, Item, Done] = GroupCommit(_add_user, max_batch=64)
    items = [Item(_email()), Item(_email(), fail=True), Item(_email())]
    first, failed, last = _submit_behind_a_gate(store, grouped, "k3", items)
    assert isinstance(first, Done) and isinstance(last, Done) and first.tx is last.tx
    assert isinstance(failed, ValueError) and str(failed) == f"{items[1].email} refused"
    assert {u.email for u in User.select().where(User.email.in_([i.email for i in items]))} == {
        items[0].email,
        items[2].email,
    }
    subjects = {e.subject for e in EventLog.select().where(EventLog.type == "test.group_commit")}
    assert f"users/{items[1].email}" not in subjects
    assert {f"users/{items[0].email}", f"users/{items[2].email}"} <= subjects


def _recover_duplicates(tx: Tx, key: str, item: Item, error: Exception) -> Any:
    """A duplicate email: the existing user is the answer; any other error stays the caller's."""
    if isinstance(error, peewee.IntegrityError):
        existing = User.get_or_none(User.email_key == item.email)
        return Done(existing.email, tx) if existing else LookupError("gone")
    return error


def test_an_item_failing_a_unique_key_is_recovered_and_the_rest_of_the_batch_commits(store):
    grouped: GroupCommit[str, Item, Done] = GroupCommit(_add_user, max_batch=64, recover=_recover_duplicates)
    taken = _email()
    grouped.submit(store, "k4", Item(taken))
    items = [Item(_email()), Item(taken), Item(_email(), fail=True), Item(_email())]
    fresh, duplicate, failed, after = _submit_behind_a_gate(store, grouped, "k4", items)
    assert isinstance(duplicate, Done) and duplicate.email == taken
    assert duplicate.tx is fresh.tx and after.tx is fresh.tx  # recovered inside the batch's transaction
    assert isinstance(failed, ValueError)
    assert User.select().where(User.email.in_([fresh.email, after.email, taken])).count() == 3


def test_a_failed_commit_fails_every_item_of_the_batch_and_stores_none_of_them(store):
    grouped: GroupCommit[str, Item, Done] = GroupCommit(_add_user, max_batch=64)
    items = [Item(_email()) for _ in range(3)]
    refused = {f"users/{i.email}" for i in items}

    def before_commit(tx: Tx) -> None:
        if any(subject in refused for subject in (e.subject for e in tx.events)):
            raise RuntimeError("commit refused")

    store.before_commit(before_commit)
    outcomes = _submit_behind_a_gate(store, grouped, "k5", items)
    assert all(isinstance(o, RuntimeError) and str(o) == "commit refused" for o in outcomes)
    assert User.select().where(User.email.in_([i.email for i in items])).count() == 0


def test_an_error_raised_by_recover_fails_the_whole_batch(store):
    def recover(tx: Tx, key: str, item: Item, error: Exception) -> Any:
        raise RuntimeError("cannot recover")

    grouped: GroupCommit[str, Item, Done] = GroupCommit(_add_user, max_batch=64, recover=recover)
    items = [Item(_email()), Item(_email(), fail=True)]
    outcomes = _submit_behind_a_gate(store, grouped, "k6", items)
    assert all(isinstance(o, RuntimeError) and str(o) == "cannot recover" for o in outcomes)
    assert User.select().where(User.email.in_([i.email for i in items])).count() == 0


def test_a_lone_caller_runs_in_its_own_transaction_and_the_group_is_released(store):
    grouped: GroupCommit[str, Item, Done] = GroupCommit(_add_user, max_batch=64)
    first = grouped.submit(store, "k7", Item(_email()))
    second = grouped.submit(store, "k7", Item(_email()))
    assert first.tx is not second.tx
    assert User.select().where(User.email.in_([first.email, second.email])).count() == 2
    with pytest.raises(ValueError, match="refused"):
        grouped.submit(store, "k7", Item(_email(), fail=True))
    assert _queued(grouped, "k7") == 0


def test_max_batch_must_be_positive():
    work: Callable[[Tx, str, Item], Done] = _add_user
    with pytest.raises(ValueError, match="max_batch"):
        GroupCommit(work, max_batch=0)
