"""The waitlist keeps exact order under every path: random sequences of registrations
(alone and in groups), cancellations, transfers, accepted and lapsed offers and capacity
changes
are run against the daemon's rules and against a model a few lines long, and after every
step each user's state and waitlist position, and the seat counters, must agree.

The model's rule for groups (docs/competition.md): the waitlist is served in strict
order of entries; a group is one entry that gets all its seats at once; while the head
entry needs more seats than are free, nobody behind it (and no newcomer) gets a seat."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordd.core.errors import DomainError
from coordd.core.paging import PageRequest
from coordd.core.principal import Principal
from coordd.domain import competition as rules
from coordd.domain import ledger
from coordd.store.competition import queries
from tests.competition.support import bulk_users, competition_server, fund

__all__ = ["competition_server"]

POOL = 8
HOLD_S = 60
FEE = 7


@dataclass
class Model:
    capacity: int
    paid: bool
    confirmed: set[int] = field(default_factory=set)
    # user -> the group it was registered with (None: alone)
    offered: dict[int, int | None] = field(default_factory=dict)
    # entries, head first: (group or None, members)
    waitlist: list[tuple[int | None, list[int]]] = field(default_factory=list)
    groups: int = 0
    # Which group each user's registration row carries, and each group's leader.
    row_group: dict[int, int | None] = field(default_factory=dict)
    leader: dict[int, int] = field(default_factory=dict)

    def active(self, u: int) -> bool:
        return u in self.confirmed or u in self.offered or any(u in m for _, m in self.waitlist)

    def free(self) -> int:
        return self.capacity - len(self.confirmed) - len(self.offered)

    def promote(self) -> None:
        while self.waitlist and len(self.waitlist[0][1]) <= self.free():
            group, members = self.waitlist.pop(0)
            for u in members:
                if self.paid:
                    self.offered[u] = group
                else:
                    self.confirmed.add(u)

    def join(self, users: list[int], group: int | None) -> None:
        if not self.waitlist and self.free() >= len(users):
            self.confirmed.update(users)
        else:
            self.waitlist.append((group, list(users)))

    def register(self, u: int) -> bool:
        if not self.active(u):
            self.row_group[u] = None
            self.join([u], None)
        return True

    def register_group(self, users: list[int]) -> bool:
        group = self.row_group.get(users[0])
        if (
            group is not None
            and all(self.active(u) and self.row_group.get(u) == group for u in users)
            and self.leader[group] == users[0]
            and {u for u, g in self.row_group.items() if g == group} == set(users)
        ):
            return True  # the same group again: returned as it is
        if any(self.active(u) for u in users) or len(users) > self.capacity:
            return False
        self.groups += 1
        self.leader[self.groups] = users[0]
        for u in users:
            self.row_group[u] = self.groups
        self.join(users, self.groups)
        return True

    def cancel(self, u: int) -> bool:
        self.confirmed.discard(u)
        self.offered.pop(u, None)
        for index, (_, members) in enumerate(self.waitlist):
            if u in members:
                members.remove(u)
                if not members:
                    del self.waitlist[index]
                break
        self.promote()
        return True

    def accept(self, u: int) -> bool:
        if u in self.confirmed:
            return True
        if u not in self.offered:
            return False
        group = self.offered[u]
        together = [v for v, g in self.offered.items() if v == u or (group is not None and g == group)]
        for v in together:
            del self.offered[v]
            self.confirmed.add(v)
        return True

    def transfer(self, u: int, v: int) -> bool:
        if u not in self.confirmed or (u != v and self.active(v)):
            return False
        if u != v:
            self.confirmed.discard(u)
            self.confirmed.add(v)
            self.row_group[v] = self.row_group.pop(u, None)
        return True

    def expire(self) -> bool:
        self.offered.clear()
        self.promote()
        return True

    def set_capacity(self, capacity: int) -> bool:
        if capacity < len(self.confirmed) + len(self.offered):
            return False
        self.capacity = capacity
        self.promote()
        return True

    def expected(self, u: int) -> tuple[str, int]:
        if u in self.confirmed:
            return "CONFIRMED", 0
        if u in self.offered:
            return "OFFERED", 0
        for index, (_, members) in enumerate(self.waitlist):
            if u in members:
                return "WAITLISTED", index + 1
        return "", 0


users = st.integers(0, POOL - 1)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("register"), users),
        st.tuples(st.just("register_group"), st.lists(users, min_size=2, max_size=4, unique=True)),
        st.tuples(st.just("cancel"), users),
        st.tuples(st.just("accept"), users),
        st.tuples(st.just("transfer"), users, users),
        st.tuples(st.just("expire")),
        st.tuples(st.just("set_capacity"), st.integers(1, 8)),
    ),
    min_size=3,
    max_size=30,
)


def participant(user_id: str) -> Principal:
    return Principal(user_id=user_id, roles=frozenset({"participant"}), kind="token")


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(capacity=st.integers(1, 5), paid=st.booleans(), script=steps)
def test_waitlist_order_matches_the_model_under_any_mix_of_paths(server, clock, capacity, paid, script):
    rt = server.rt
    rules.configure(rt, batch=100_000)
    if not hasattr(rt, "_waitlist_pool"):
        org_id, _ = server.make_user("organizer")
        pool = [u for u, _ in bulk_users(server, POOL)]
        for user_id in pool:
            fund(server, user_id, 10**9)
        rt._waitlist_pool = (org_id, pool)
    org_id, pool = rt._waitlist_pool
    org = Principal(user_id=org_id, roles=frozenset({"organizer"}), kind="token")
    now = rt.now()
    comp_id = rules.create_competition(
        rt,
        org,
        rules.CompetitionInput(
            title="property",
            capacity=capacity,
            open_time=now - timedelta(minutes=1),
            close_time=now + timedelta(days=30),
            start_time=now + timedelta(days=31),
            end_time=now + timedelta(days=32),
            entry_fee=FEE if paid else 0,
            offer_hold_s=HOLD_S,
            reminder_lead_s=0,
        ),
    ).competition.id
    rules.publish_competition(rt, org, comp_id)
    model = Model(capacity, paid)

    def real(step: tuple) -> bool:
        kind = step[0]
        try:
            if kind == "register":
                rules.register(rt, participant(pool[step[1]]), comp_id)
            elif kind == "register_group":
                leader = participant(pool[step[1][0]])
                rules.register_group(rt, leader, comp_id, [pool[u] for u in step[1]])
            elif kind in ("cancel", "accept"):
                reg = queries.registration_of(comp_id, pool[step[1]])
                if reg is None:
                    return kind == "cancel"
                act = rules.cancel_registration if kind == "cancel" else rules.accept_offer
                act(rt, participant(pool[step[1]]), comp_id, reg.id)
            elif kind == "transfer":
                reg = queries.registration_of(comp_id, pool[step[1]])
                if reg is None:
                    return False
                rules.transfer_registration(rt, participant(pool[step[1]]), comp_id, reg.id, pool[step[2]])
            elif kind == "expire":
                clock.advance(HOLD_S + 1)
                rules.expire_offers(rt)
            else:
                rules.update_competition(
                    rt, org, comp_id, rules.CompetitionInput(capacity=step[1]), ["capacity"]
                )
        except DomainError:
            return False
        return True

    for number, step in enumerate(script):
        ok = getattr(model, step[0])(*step[1:])
        assert real(step) == ok, f"step {number} {step}: the rules and the model disagree on success"
        views = rules.list_registrations(org, comp_id, PageRequest.of(1000, ""), "").items
        got = {v.registration.user_id: v for v in views}
        for index, user_id in enumerate(pool):
            view = got.get(user_id)
            state = view.registration.state if view and view.registration.state in rules.ACTIVE else ""
            actual = (state, view.position if state else 0)
            assert actual == model.expected(index), f"after step {number} {step}: user {index}"
        comp = queries.find_competition(comp_id)
        assert (comp.confirmed, comp.offered, comp.waitlisted) == (
            len(model.confirmed),
            len(model.offered),
            sum(len(m) for _, m in model.waitlist),
        ), f"counters after step {number} {step}"
        assert comp.waitlisted - comp.waitlist_extra == len(model.waitlist)
        assert comp.capacity == model.capacity
        for view in views:
            held = FEE if paid and view.registration.state == rules.CONFIRMED else 0
            assert view.registration.fee_held == held
    assert ledger.check_consistency() == []
