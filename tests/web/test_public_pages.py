"""Public project status pages (opt-in per project) and competition pages, on both backends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf import field_mask_pb2

from coordd_client.v1 import node_pb2
from tests.competition.support import create, register
from tests.node.helpers import Fleet
from tests.support.server import Clock, ServerHandle
from tests.web.helpers import Browser, marked


@pytest.fixture
def quiet_server(settings_factory, clock: Clock) -> Iterator[ServerHandle]:  # type: ignore[no-untyped-def]
    """The scheduler off: the tests run node detection themselves, so nothing races them."""
    handle = ServerHandle(settings_factory(http_listen="127.0.0.1:0", scheduler_enabled=False), clock)
    try:
        yield handle
    finally:
        handle.stop()


def _publish_status(fleet: Fleet, project_name: str, on: bool = True) -> None:
    """The owner opts the project in to (or out of) its public status page: UpdateProject."""
    fleet.stub.UpdateProject(
        node_pb2.UpdateProjectRequest(
            project=node_pb2.Project(name=project_name, public_status=on),
            update_mask=field_mask_pb2.FieldMask(paths=["public_status"]),
        ),
        metadata=fleet.md,
    )


def test_an_opted_in_projects_status_page_shows_a_node_going_down_with_its_incident(quiet_server, clock):
    fleet = Fleet(quiet_server)
    project = fleet.project(interval=1, misses=2, grace=1)
    pid = project.name.split("/")[1]
    _, key = fleet.node(project, "alpha")
    fleet.up(key)
    fleet.flush()
    browser = Browser(quiet_server.app.http_port)
    assert browser.get(f"/status/{pid}").status == 404  # not opted in: no page at all
    _publish_status(fleet, project.name)
    page = browser.get(f"/status/{pid}").text
    assert marked(page, "node-status") == ["UP"]
    assert page.count('<span class="good"') + page.count('<span class="none"') == 90
    clock.advance(10)
    fleet.detect()
    page = browser.get(f"/status/{pid}").text
    assert marked(page, "node-status") == ["DOWN"]
    doc = browser.get(f"/api/status/{pid}").json()
    (n,) = doc["nodes"]
    assert n["status"] == "DOWN" and len(n["daily_uptime"]) == 90
    (incident,) = n["incidents"]
    assert incident["open"] and incident["duration_seconds"] >= 0
    assert "ongoing" in page


def test_a_project_not_opted_in_has_no_status_page_like_one_that_does_not_exist(quiet_server):
    fleet = Fleet(quiet_server)
    project = fleet.project()
    pid = project.name.split("/")[1]
    browser = Browser(quiet_server.app.http_port)
    hidden = browser.get(f"/api/status/{pid}").json()
    missing = browser.get("/api/status/nosuchproject").json()
    assert hidden["error"]["reason"] == missing["error"]["reason"] == "NOT_FOUND"
    assert hidden["error"]["message"].replace(pid, "X") == missing["error"]["message"].replace(
        "nosuchproject", "X"
    )
    assert browser.get(f"/status/{pid}").status == 404
    _publish_status(fleet, project.name)
    assert browser.get(f"/status/{pid}").status == 200
    _publish_status(fleet, project.name, on=False)  # the owner takes it down again
    assert browser.get(f"/status/{pid}").status == 404
    assert browser.get(f"/api/status/{pid}").status == 404
    assert browser.get("/api/status/%3Cx%3E").json()["error"]["reason"] == "NOT_FOUND"


def test_a_competition_page_shows_seats_left_waitlist_and_deadline_and_hides_drafts(web_server, browser):
    _, organizer = web_server.make_user("organizer")
    comp = create(web_server, organizer, capacity=2)
    cid = comp.name.split("/")[1]
    for _ in range(3):
        register(web_server, web_server.make_user("participant")[1], comp.name)
    page = browser.get(f"/competitions/{cid}").text
    assert marked(page, "seats-left") == ["0"] and marked(page, "waitlist") == ["1"]
    doc = browser.get(f"/api/competitions/{cid}").json()
    assert (doc["seats_left"], doc["waitlist_length"], doc["capacity"]) == (0, 1, 2)
    assert doc["registration_deadline"].endswith("Z") and doc["results"] is None
    assert "Not published yet" in page
    draft = create(web_server, organizer, publish=False)
    assert browser.get(f"/competitions/{draft.name.split('/')[1]}").status == 404


def test_an_operator_sees_their_fleet_in_the_console_whether_or_not_it_is_public(quiet_server, clock):
    from coordd.domain import auth
    from tests.web.test_console import _user, sign_in

    fleet = Fleet(quiet_server)
    project = fleet.project(interval=1, misses=2, grace=1)
    pid = project.name.split("/")[1]
    _, key = fleet.node(project, "beta")
    fleet.up(key)
    fleet.flush()
    clock.advance(10)
    fleet.detect()
    b = sign_in(quiet_server, auth.get_user(fleet.owner_id).email)
    assert project.display_name in b.get("/console/projects").text
    page = b.get(f"/console/projects/{pid}").text
    assert marked(page, "node-status") == ["DOWN"] and "ongoing" in page
    assert Browser(quiet_server.app.http_port).get(f"/status/{pid}").status == 404  # not public
    participant, _, _ = _user(quiet_server, "participant")
    assert sign_in(quiet_server, participant).get(f"/console/projects/{pid}").status == 403
