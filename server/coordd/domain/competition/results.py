"""Entries while the competition runs; after it ends, the signed results, the prizes paid
from the fee pool, and the leaderboard."""

from __future__ import annotations

import hashlib
import json
import re

from coordd.core.errors import FailedPrecondition, Violations
from coordd.core.paging import Page, PageRequest
from coordd.core.principal import Principal
from coordd.domain import ledger
from coordd.domain.competition.common import get_visible, lock_owned, name, payer_of, precondition
from coordd.domain.competition.lifecycle import run_chain, transition
from coordd.domain.competition.notifications import notify_many
from coordd.domain.competition.settings import settings_of
from coordd.domain.competition.states import CONFIRMED, ENDED, RESULTS, RESULTS_PUBLISHED, RUNNING
from coordd.domain.competition.validation import DIGEST_RE
from coordd.domain.competition.views import CompetitionView, Entry, LeaderboardRow, SignedResults
from coordd.runtime import Runtime
from coordd.store.competition import queries
from coordd.store.competition.models import Competition

RESULTS_CONTEXT = b"coordd.competition.results.v1\n"


def submit_entry(rt: Runtime, who: Principal, comp_id: str, payload: bytes, uri: str, digest: str) -> Entry:
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
        comp = get_visible(who, comp_id)
        reg = queries.registration_of(comp_id, who.user_id)
        if reg is None or reg.state != CONFIRMED:
            raise FailedPrecondition(
                "only confirmed participants submit entries",
                reason="NOT_CONFIRMED",
                metadata={"competition": name(comp_id)},
            )
        if comp.state != RUNNING or not comp.start_time <= tx.now < comp.end_time:
            raise precondition(
                "entries are accepted only while the competition is running", "NOT_RUNNING", comp
            )
        entry = queries.entry_of(reg.id)
        revision = 1 if entry is None else entry.revision + 1
        if entry is None:
            entry = Entry(registration=reg.id, competition=comp_id, user=who.user_id)
        entry.payload = payload or None
        entry.uri = uri
        entry.digest = digest if uri else "sha256:" + hashlib.sha256(payload).hexdigest()
        entry.size_bytes = len(payload)
        entry.revision = revision
        entry.submit_time = tx.now
        queries.save_entry(entry, new=revision == 1)
        tx.emit(
            "competition.entry.submitted",
            f"{name(comp_id)}/entries/{entry.id}",
            {"user": f"users/{who.user_id}", "revision": revision, "watch_keys": [name(comp_id)]},
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
        comp = lock_owned(rt, who, comp_id)
        if comp.state != ENDED:
            raise precondition(
                f"results are published once the competition has ENDED, not {comp.state}", "NOT_ENDED", comp
            )
        confirmed = {r.user_id: r for r in queries.registrations_in_state(comp_id, CONFIRMED)}
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
                (ledger.held_account(payer_of(r)), -r.fee_held) for r in confirmed.values() if r.fee_held > 0
            ]
            movements += [(ledger.available_account(r["user"]), r["prize"]) for r in rows if r["prize"] > 0]
            if pool - paid > 0:
                # What the split leaves (shares under 100 %, rounding) goes to the organizer.
                movements.append((ledger.available_account(comp.owner_id), pool - paid))
            ledger.post(tx, "competition.prizes", name(comp_id), movements)
            queries.clear_fees_in(comp_id, tx.now)
        queries.insert_results(
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
        )
        document = {
            "competition": name(comp_id),
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
        transition(tx, comp, RESULTS_PUBLISHED, f"results published ({len(rows)} ranked, {paid} paid)")
        notify_many(tx, comp, [(r.id, r.user_id) for r in confirmed.values()], RESULTS)
        run_chain(tx, comp, settings_of(rt).max_chain)
        queries.save_competition(comp)
        signed = _signed(rt, comp)
    return CompetitionView(comp, queries.transitions_of([comp.id])[comp.id]), signed


def _signed(rt: Runtime, comp: Competition) -> SignedResults:
    return SignedResults(
        bytes(comp.results_payload), bytes(comp.results_signature), comp.results_key_id, rt.signer.public_key
    )


def get_results(rt: Runtime, who: Principal, comp_id: str) -> SignedResults:
    comp = get_visible(who, comp_id)
    if comp.results_payload is None:
        raise precondition("results have not been published", "NO_RESULTS", comp)
    return _signed(rt, comp)


def leaderboard(who: Principal, comp_id: str, page: PageRequest) -> Page[LeaderboardRow]:
    comp = get_visible(who, comp_id)
    if comp.results_payload is None:
        raise precondition("results have not been published", "NO_RESULTS", comp)
    found = queries.leaderboard_page(comp_id, page)
    return Page([LeaderboardRow(r, r.user.display_name) for r in found.items], found.next_token)
