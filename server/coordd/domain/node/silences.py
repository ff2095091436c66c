"""Silences: notifications about a project, one node, or the nodes with a label are held
back for a time, with a reason and the user who set it. States, incidents and uptime stay
true. When a silence ends (its end time, or `end_silence`) a covered node that is still
DOWN, with an outage nobody was told about, is notified once (unless another silence
still covers it, or it is FLAPPING).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import coordd.domain.node.alerts as alerts
from coordd.core.errors import DomainError, FailedPrecondition, NotFound, Violations
from coordd.core.paging import Page, PageRequest
from coordd.core.principal import Principal
from coordd.domain.node.access import owned_project, require_operator, visible_node
from coordd.domain.node.policies import LABEL_KEY_RE
from coordd.runtime import Runtime
from coordd.store.node import health, monitoring, queries
from coordd.store.node.models import DOWN, Silence

MAX_SILENCE = timedelta(days=30)


def create_silence(
    rt: Runtime,
    who: Principal,
    project_id: str,
    node_id: str,
    label_key: str,
    label_value: str,
    start: datetime | None,
    end: datetime,
    reason: str,
) -> Silence:
    """The project's owner silences anything in it; a node's operator, their node."""
    require_operator(who)
    now = rt.now()
    start = start or now
    v = Violations()
    if not reason.strip():
        v.add("silence.reason", "required: say why")
    elif len(reason) > 500:
        v.add("silence.reason", "at most 500 characters")
    if end <= max(start, now):
        v.add("silence.end_time", "must be after the start and in the future")
    elif end - start > MAX_SILENCE:
        v.add("silence.end_time", "a silence lasts at most 30 days")
    if node_id and label_key:
        v.add("silence.label_key", "a silence matches a node or a label, not both")
    if label_key and not LABEL_KEY_RE.match(label_key):
        v.add("silence.label_key", "a label key")
    if len(label_value) > 255:
        v.add("silence.label_value", "at most 255 characters")
    v.raise_if_any()
    with rt.store.write() as tx:
        if node_id:
            node = visible_node(who, node_id)
            if node.project_id != project_id:
                raise FailedPrecondition(f"nodes/{node_id} is not in projects/{project_id}")
        else:
            owned_project(who, project_id)
        silence = monitoring.insert_silence(
            project=project_id,
            node_id=node_id,
            label_key=label_key,
            label_value=label_value,
            start_time=start,
            end_time=end,
            reason=reason.strip(),
            created_by=who.user_id,
            create_time=tx.now,
            next_action_time=end,
        )
        tx.emit("node.silence.created", f"silences/{silence.id}", {"project": f"projects/{project_id}"})
    return silence


def _visible(who: Principal, silence_id: str) -> Silence:
    silence = monitoring.get_silence(silence_id)
    if silence is not None:
        try:
            if silence.node_id:
                visible_node(who, silence.node_id)
            else:
                owned_project(who, silence.project_id)
            return silence
        except DomainError:  # someone else's silence is reported as missing
            pass
    raise NotFound(f"silences/{silence_id} not found", metadata={"resource": f"silences/{silence_id}"})


def end_silence(rt: Runtime, who: Principal, silence_id: str) -> Silence:
    """Ends a silence now; held-back outages are then notified (by `run_silences`, at once)."""
    require_operator(who)
    with rt.store.write() as tx:
        silence = _visible(who, silence_id)
        if silence.end_time > tx.now:
            silence.end_time = max(tx.now, silence.start_time)
            silence.next_action_time = tx.now
            monitoring.save_silence(silence)
            tx.emit("node.silence.ended", f"silences/{silence.id}", {})
        else:
            tx.emit("node.silence.unchanged", f"silences/{silence.id}", {})
    run_silences(rt)
    return monitoring.get_silence(silence_id) or silence


def list_silences(who: Principal, project_id: str, page: PageRequest) -> Page[Silence]:
    require_operator(who)
    owned_project(who, project_id)
    return monitoring.page_silences(project_id, page)


def run_silences(rt: Runtime, batch: int = 100) -> int:
    """Scheduler task: handles the silences that ended. Returns the held outages notified."""
    notified = 0
    with rt.store.write() as tx:
        for silence in monitoring.due_silences(tx.now, batch):
            silence.next_action_time = None
            silence.ended_time = tx.now
            monitoring.save_silence(silence)
            nodes = monitoring.nodes_matching(
                silence.project_id, silence.node_id, silence.label_key, silence.label_value
            )
            down = [n for n in nodes if n.status == DOWN and n.flapping_since is None]
            if not down:
                continue
            project = queries.get_project(silence.project_id)
            for node in down:
                if alerts.silence_over(node, tx.now, ignoring=silence.id) is not None:
                    continue
                incident = health.open_incident_of(node.id)
                why = f"silence {silence.id} ended while the node was still down"
                if incident is not None and alerts.announce_held(tx, incident, node, project, why):
                    notified += 1
    return notified
