"""The operator console over plain HTTP, on both backends: sign-in, the jobs a user may see,
actions with the gRPC API's roles, CSRF, and the audit trail."""

from __future__ import annotations

import re
import uuid

import pytest

from coordd.core.paging import PageRequest
from coordd.domain import auth
from coordd_client.v1 import job_pb2, job_pb2_grpc
from tests.support.server import bearer
from tests.web.helpers import Browser, marked

PASSWORD = "correct horse battery"


def _user(server, *roles):
    email = f"{roles[0]}-{uuid.uuid4().hex[:8]}@example.com"
    user_id, token = server.make_user(*roles, email=email)
    return email, user_id, token


def sign_in(server, email: str) -> Browser:
    b = Browser(server.app.http_port)
    form = b.get("/console/login").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    reply = b.post("/console/login", {"email": email, "password": PASSWORD, "csrf_token": csrf, "next": ""})
    assert reply.status == 303, reply.text
    return b


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def failed_job(server, submitter_token: str) -> str:
    """A job its provider failed for good (not retryable): a dead letter, FAILED."""
    stub = job_pb2_grpc.JobServiceStub(server.channel)
    job = stub.SubmitJob(
        job_pb2.SubmitJobRequest(
            kind=job_pb2.JOB_KIND_INFERENCE, model_ref="hf://org/model@1", input=job_pb2.Payload(data=b"x")
        ),
        metadata=bearer(submitter_token),
    ).job
    _, provider = server.make_user("provider")
    (leased,) = stub.ClaimJobs(job_pb2.ClaimJobsRequest(max_jobs=1), metadata=bearer(provider)).jobs
    stub.FailJob(
        job_pb2.FailJobRequest(lease=leased.lease, error="bad weights", retryable=False),
        metadata=bearer(provider),
    )
    return job.name.split("/")[1]


def _audit(server, action: str) -> list[auth.AuditRow]:
    return auth.list_audit_events(PageRequest.of(100, ""), f'action = "{action}"').items


def test_sign_in_sets_an_httponly_samesite_session_and_a_wrong_password_does_not(web_server):
    email, _, _ = _user(web_server, "admin")
    b = Browser(web_server.app.http_port)
    form = b.get("/console/login")
    assert form.headers["cache-control"] == "no-store"
    bad = b.post(
        "/console/login", {"email": email, "password": "nope nope nope", "csrf_token": csrf_of(form.text)}
    )
    assert bad.status == 401 and "coordd_session" not in b.cookies
    conn_cookie = b.post(
        "/console/login", {"email": email, "password": PASSWORD, "csrf_token": csrf_of(form.text)}
    )
    assert conn_cookie.status == 303
    (set_cookie,) = [c for c in conn_cookie.set_cookies if c.startswith("coordd_session=")]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    assert b.get("/console/jobs").status == 200


def test_the_login_form_refuses_a_post_without_its_csrf_token(web_server):
    email, _, _ = _user(web_server, "admin")
    b = Browser(web_server.app.http_port)
    reply = b.post("/console/login", {"email": email, "password": PASSWORD})
    assert reply.status == 403 and "coordd_session" not in b.cookies


def test_without_a_session_the_console_redirects_to_sign_in_and_its_json_is_unauthenticated(web_server):
    b = Browser(web_server.app.http_port)
    reply = b.get("/console/jobs")
    assert reply.status == 303 and reply.headers["location"].startswith("/console/login")
    assert b.get("/api/console/jobs").json()["error"]["reason"] == "NO_SESSION"


def test_an_admin_retries_a_failed_job_and_sees_it_queued_and_the_action_is_audited(web_server):
    email, admin_id, admin_token = _user(web_server, "admin")
    jid = failed_job(web_server, admin_token)
    b = sign_in(web_server, email)
    listing = b.get("/console/jobs?state=failed").text
    assert f"jobs/{jid}" in listing and marked(listing, "job-state") == ["failed"]
    page = b.get(f"/console/jobs/{jid}").text
    assert marked(page, "retry") == ["Retry (requeue)"]
    reply = b.post(f"/console/jobs/{jid}/requeue", {"csrf_token": csrf_of(page)})
    assert reply.status == 303
    after = b.get(reply.headers["location"]).text
    assert marked(after, "job-state") == ["queued"] and marked(after, "done") == ["Done: requeued."]
    (row,) = [r for r in _audit(web_server, "web.action") if r.target == f"jobs/{jid}"]
    assert row.actor == f"users/{admin_id}" and row.detail["method"] == "coordd.v1.JobService.RequeueJob"
    assert b.get("/api/console/jobs?state=queued").json()["jobs"][0]["name"] == f"jobs/{jid}"


def test_a_participant_sees_no_actions_and_cannot_post_one(web_server):
    email, participant_id, token = _user(web_server, "participant")
    jid = failed_job(web_server, token)
    b = sign_in(web_server, email)
    page = b.get(f"/console/jobs/{jid}").text
    assert marked(page, "job-state") == ["failed"] and not marked(page, "retry")
    reply = b.post(f"/console/jobs/{jid}/requeue", {"csrf_token": csrf_of(page)})
    assert reply.status == 403 and "admin" in reply.text
    assert marked(b.get(f"/console/jobs/{jid}").text, "job-state") == ["failed"]
    denied = _audit(web_server, "rpc.denied")
    assert any(r.actor == f"users/{participant_id}" and r.detail["reason"] == "ROLE_REQUIRED" for r in denied)


@pytest.mark.parametrize("forgery", ["no token", "wrong token", "other origin"])
def test_a_forged_post_is_refused_and_changes_nothing(web_server, forgery):
    email, _, admin_token = _user(web_server, "admin")
    jid = failed_job(web_server, admin_token)
    b = sign_in(web_server, email)
    page = b.get(f"/console/jobs/{jid}").text
    form = {
        "no token": {},
        "wrong token": {"csrf_token": "0" * 64},
        "other origin": {"csrf_token": csrf_of(page)},
    }
    headers = {"Origin": "https://evil.example"} if forgery == "other origin" else None
    reply = b.post(f"/console/jobs/{jid}/requeue", form[forgery], headers=headers)
    assert reply.status == 403 and "CSRF" in reply.text
    assert marked(b.get(f"/console/jobs/{jid}").text, "job-state") == ["failed"]


def test_a_user_sees_only_their_own_jobs_and_another_users_job_is_not_found(web_server):
    alice_email, _, alice = _user(web_server, "participant")
    _, _, bob = _user(web_server, "participant")
    mine, theirs = failed_job(web_server, alice), failed_job(web_server, bob)
    b = sign_in(web_server, alice_email)
    names = [j["name"] for j in b.get("/api/console/jobs").json()["jobs"]]
    assert names == [f"jobs/{mine}"]
    assert b.get(f"/console/jobs/{theirs}").status == 404


def test_signing_out_needs_the_csrf_token_and_ends_the_session(web_server):
    email, _, _ = _user(web_server, "admin")
    b = sign_in(web_server, email)
    page = b.get("/console/jobs").text
    b.post("/console/logout", {})
    assert b.get("/console/jobs").status == 200  # a forged sign-out did nothing
    b.post("/console/logout", {"csrf_token": csrf_of(page)})
    assert b.get("/console/jobs").status == 303


def test_an_admin_lists_another_submitters_failed_jobs_and_retries_and_cancels_one(web_server):
    """ListJobs lets an admin list one other submitter's jobs (not all submitters at once):
    the console's submitter filter is that; RequeueJob and CancelJob work on anyone's job for an
    admin, as over gRPC."""
    _, bob_id, bob = _user(web_server, "participant")
    jid = failed_job(web_server, bob)
    email, admin_id, _ = _user(web_server, "admin")
    b = sign_in(web_server, email)
    assert f"jobs/{jid}" not in b.get("/console/jobs?state=failed").text  # default: the admin's own
    listing = b.get(f"/console/jobs?state=failed&submitter=users/{bob_id}").text
    assert marked(listing, "job-submitter") == [f"users/{bob_id}"] and f"jobs/{jid}" in listing
    page = b.get(f"/console/jobs/{jid}").text
    assert "bad weights" in page and marked(page, "retry") == ["Retry (requeue)"]
    reply = b.post(f"/console/jobs/{jid}/requeue", {"csrf_token": csrf_of(page)})
    assert marked(b.get(reply.headers["location"]).text, "job-state") == ["queued"]
    page = b.get(f"/console/jobs/{jid}").text
    reply = b.post(f"/console/jobs/{jid}/cancel", {"csrf_token": csrf_of(page), "reason": "bad input"})
    assert reply.status == 303
    assert marked(b.get(reply.headers["location"]).text, "job-state") == ["cancelled"]
    rows = [r for r in _audit(web_server, "web.action") if r.target == f"jobs/{jid}"]
    assert {r.detail["method"].rsplit(".", 1)[1] for r in rows} == {"RequeueJob", "CancelJob"}
    assert all(r.actor == f"users/{admin_id}" for r in rows)


def test_an_admin_lists_every_submitters_jobs_and_a_non_admin_may_not(web_server):
    _, bob_id, bob = _user(web_server, "participant")
    jid = failed_job(web_server, bob)
    email, _, _ = _user(web_server, "admin")
    b = sign_in(web_server, email)
    listing = b.get("/console/jobs?state=failed&submitter=users/-").text
    assert f"jobs/{jid}" in listing and f"users/{bob_id}" in marked(listing, "job-submitter")
    doc = b.get("/api/console/jobs?submitter=users/-").json()
    assert jid in {j["name"].removeprefix("jobs/") for j in doc["jobs"]}
    email, _, _ = _user(web_server, "provider")
    refused = sign_in(web_server, email).get("/api/console/jobs?submitter=users/-")
    assert refused.status == 403 and refused.json()["error"]["reason"] == "NOT_OWNER"


def test_a_non_admin_can_neither_list_nor_cancel_another_users_jobs(web_server):
    _, bob_id, bob = _user(web_server, "participant")
    jid = failed_job(web_server, bob)
    email, _, _ = _user(web_server, "provider")
    b = sign_in(web_server, email)
    refused = b.get(f"/api/console/jobs?submitter=users/{bob_id}")
    assert refused.status == 403 and refused.json()["error"]["reason"] == "NOT_OWNER"
    csrf = csrf_of(b.get("/console/jobs").text)
    assert b.post(f"/console/jobs/{jid}/cancel", {"csrf_token": csrf}).status == 404  # not theirs: not found
    assert b.post(f"/console/jobs/{jid}/requeue", {"csrf_token": csrf}).status == 403
