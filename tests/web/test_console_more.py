"""The console's ceremony, competition and audit pages: the gRPC roles, ownership, actions
with CSRF tokens, the audit trail; on both backends."""

from __future__ import annotations

from coordd.core.paging import PageRequest
from coordd.domain import auth
from coordd_client.v1 import ceremony_pb2 as pb
from tests.ceremony.e2e_ceremony.helpers import Ceremonies
from tests.competition.support import create, register
from tests.web.helpers import marked
from tests.web.test_console import _user, csrf_of, sign_in


def test_a_coordinator_lists_participants_pauses_and_resumes_their_ceremony(web_server):
    cer = Ceremonies(web_server)
    ceremony, _ = cer.open(circuits=1)
    cid = ceremony.name.split("/")[1]
    for _ in range(2):
        cer.join(ceremony, web_server.make_user("participant")[1])
    b = sign_in(web_server, auth.get_user(cer.coordinator_id).email)
    page = b.get(f"/console/ceremonies/{cid}").text
    assert len(marked(page, "participant")) == 2 and marked(page, "ceremony-state") == ["opened"]
    reply = b.post(f"/console/ceremonies/{cid}/pause", {"csrf_token": csrf_of(page)})
    page = b.get(reply.headers["location"]).text
    assert marked(page, "ceremony-state") == ["paused"] and marked(page, "resume") == ["Resume"]
    assert b.post(f"/console/ceremonies/{cid}/resume", {}).status == 403  # no CSRF token
    reply = b.post(f"/console/ceremonies/{cid}/resume", {"csrf_token": csrf_of(page)})
    assert marked(b.get(reply.headers["location"]).text, "ceremony-state") == ["opened"]
    rows = auth.list_audit_events(PageRequest.of(100, ""), 'action = "web.action"').items
    assert [r.detail["method"].rsplit(".", 1)[1] for r in rows if r.target == ceremony.name] == [
        "ResumeCeremony",
        "PauseCeremony",
    ]


def test_another_coordinator_and_a_participant_cannot_manage_someone_elses_ceremony(web_server):
    cer = Ceremonies(web_server)
    ceremony, _ = cer.open(circuits=1)
    cid = ceremony.name.split("/")[1]
    other, _, _ = _user(web_server, "coordinator")
    b = sign_in(web_server, other)
    assert b.get(f"/console/ceremonies/{cid}").status == 403
    page = b.get("/console/ceremonies").text
    assert b.post(f"/console/ceremonies/{cid}/pause", {"csrf_token": csrf_of(page)}).status == 403
    participant, _, _ = _user(web_server, "participant")
    p = sign_in(web_server, participant)
    reply = p.get(f"/console/ceremonies/{cid}")
    assert reply.status == 403 and "coordinator" in reply.text
    assert cer.get(ceremony.name).state == pb.CEREMONY_STATE_OPENED


def test_an_organizer_sees_their_competitions_registrations(web_server):
    email, _, organizer = _user(web_server, "organizer")
    comp = create(web_server, organizer, capacity=1)
    for _ in range(2):
        register(web_server, web_server.make_user("participant")[1], comp.name)
    b = sign_in(web_server, email)
    page = b.get(f"/console/competitions/{comp.name.split('/')[1]}").text
    assert len(marked(page, "registration")) == 2
    stranger, _, _ = _user(web_server, "organizer")
    assert sign_in(web_server, stranger).get(f"/console/competitions/{comp.name.split('/')[1]}").status in (
        403,
        404,
    )


def test_only_admins_read_the_audit_log(web_server):
    admin, admin_id, _ = _user(web_server, "admin")
    b = sign_in(web_server, admin)
    page = b.get('/console/audit?filter=action+%3D+"auth.login"').text
    assert marked(page, "audit-row") and f"users/{admin_id}" in page
    assert b.get("/console/audit?filter=nonsense+%3D%3D").status == 400
    participant, _, _ = _user(web_server, "participant")
    assert sign_in(web_server, participant).get("/console/audit").status == 403
