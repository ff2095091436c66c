"""Public project status pages (opt-in per project) and competition pages, on both backends."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

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


def _publish_status(server: ServerHandle, *project_ids: str) -> None:
    server.rt.settings = dataclasses.replace(server.rt.settings, http_status_projects=",".join(project_ids))


def test_a_listed_projects_status_page_shows_a_node_going_down_with_its_incident(quiet_server, clock):
    fleet = Fleet(quiet_server)
    project = fleet.project(interval=1, misses=2, grace=1)
    pid = project.name.split("/")[1]
    _, key = fleet.node(project, "alpha")
    fleet.up(key)
    fleet.flush()
    browser = Browser(quiet_server.app.http_port)
    assert browser.get(f"/status/{pid}").status == 404  # not opted in: no page at all
    _publish_status(quiet_server, pid)
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


def test_an_unlisted_or_malformed_project_has_no_status_page(quiet_server):
    browser = Browser(quiet_server.app.http_port)
    _publish_status(quiet_server, "someproject")
    assert browser.get("/status/otherproject").status == 404
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


def test_a_project_can_be_listed_by_its_slug(quiet_server):
    fleet = Fleet(quiet_server)
    project = fleet.project()
    pid = project.name.split("/")[1]
    _publish_status(quiet_server, project.slug)
    assert Browser(quiet_server.app.http_port).get(f"/api/status/{pid}").json()["name"] == project.name


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
