"""Node incidents and silences in the console, on both backends: an operator acknowledges an
incident, creates and ends a silence (CSRF on every POST, each one audited), and a user
without the node_operator role is refused, as on the gRPC API."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from coordd.core.paging import PageRequest
from coordd.domain import auth
from coordd.store.node import monitoring
from tests.node.helpers import Fleet
from tests.support.server import Clock, ServerHandle
from tests.web.helpers import marked
from tests.web.test_console import _user, csrf_of, sign_in


@pytest.fixture
def quiet_server(settings_factory, clock: Clock) -> Iterator[ServerHandle]:  # type: ignore[no-untyped-def]
    handle = ServerHandle(settings_factory(http_listen="127.0.0.1:0", scheduler_enabled=False), clock)
    try:
        yield handle
    finally:
        handle.stop()


def _down_fleet(server: ServerHandle, clock: Clock) -> tuple[Fleet, str, str]:
    fleet = Fleet(server)
    project = fleet.project(interval=1, misses=2, grace=1)
    node, key = fleet.node(project, "alpha")
    fleet.up(key)
    fleet.flush()
    clock.advance(10)
    fleet.detect()
    return fleet, project.name.split("/")[1], node.name.split("/")[1]


def _web_actions() -> list[str]:
    rows = auth.list_audit_events(PageRequest.of(100, ""), 'action = "web.action"').items
    return [r.target for r in rows]


def test_an_operator_acknowledges_an_incident_and_creates_and_ends_a_silence(quiet_server, clock):
    fleet, pid, nid = _down_fleet(quiet_server, clock)
    b = sign_in(quiet_server, auth.get_user(fleet.owner_id).email)
    page = b.get(f"/console/projects/{pid}/alerts").text
    assert len(marked(page, "incident-row")) == 1 and "ongoing" in page
    (incident_id,) = re.findall(r"/console/incidents/([A-Za-z0-9_-]+)/acknowledge", page)
    forged = b.post(f"/console/incidents/{incident_id}/acknowledge", {})
    assert forged.status == 403 and "CSRF" in forged.text
    assert monitoring.get_incident(incident_id).acknowledged_time is None
    done = b.post(f"/console/incidents/{incident_id}/acknowledge", {"csrf_token": csrf_of(page)})
    assert done.status == 303
    page = b.get(done.headers["location"]).text
    assert marked(page, "done") == ["Done: acknowledged."]
    assert monitoring.get_incident(incident_id).acknowledged_by == fleet.owner_id
    assert 'data-testid="acknowledge"' not in page

    form = {"csrf_token": csrf_of(page), "target": f"nodes/{nid}", "minutes": "30", "reason": "disk swap"}
    assert b.post(f"/console/projects/{pid}/silences", {**form, "csrf_token": ""}).status == 403
    bad = b.post(f"/console/projects/{pid}/silences", {**form, "reason": " "})
    assert bad.status == 400 and "reason" in bad.text
    made = b.post(f"/console/projects/{pid}/silences", form)
    assert made.status == 303
    page = b.get(f"/console/projects/{pid}/alerts").text
    assert marked(page, "silence-state")[0].startswith("active") and "disk swap" in page
    (silence_id,) = re.findall(r"/console/silences/([A-Za-z0-9_-]+)/end", page)
    ended = b.post(f"/console/silences/{silence_id}/end", {"csrf_token": csrf_of(page)})
    assert ended.status == 303
    page = b.get(f"/console/projects/{pid}/alerts").text
    assert marked(page, "silence-state") == ["ended"]
    assert {f"incidents/{incident_id}", f"silences/{silence_id}"} <= set(_web_actions())


def test_a_user_without_the_operator_role_cannot_see_or_act_on_incidents(quiet_server, clock):
    fleet, pid, _ = _down_fleet(quiet_server, clock)
    owner = sign_in(quiet_server, auth.get_user(fleet.owner_id).email)
    (incident_id,) = re.findall(
        r"/console/incidents/([A-Za-z0-9_-]+)/acknowledge", owner.get(f"/console/projects/{pid}/alerts").text
    )
    email, _, _ = _user(quiet_server, "participant")
    b = sign_in(quiet_server, email)
    assert b.get(f"/console/projects/{pid}/alerts").status == 403
    csrf = csrf_of(b.get("/console/jobs").text)
    refused = b.post(f"/console/incidents/{incident_id}/acknowledge", {"csrf_token": csrf})
    assert refused.status == 403 and "node_operator" in refused.text
    form = {"csrf_token": csrf, "target": "", "minutes": "30", "reason": "x"}
    assert b.post(f"/console/projects/{pid}/silences", form).status == 403
    assert monitoring.get_incident(incident_id).acknowledged_time is None
    # Another operator (the role, not the project) is told the incident does not exist.
    other = Fleet(quiet_server)
    ob = sign_in(quiet_server, auth.get_user(other.owner_id).email)
    csrf = csrf_of(ob.get("/console/jobs").text)
    assert ob.post(f"/console/incidents/{incident_id}/acknowledge", {"csrf_token": csrf}).status == 404
    assert ob.post(f"/console/projects/{pid}/silences", {**form, "csrf_token": csrf}).status == 403
