"""The pages in a real browser (Debian's chromium, headless, driven by Playwright) against a
real `coordd serve --http`: live updates, receipts, and a screenshot of each page, written
under var/screenshots/ when the module's tests are done."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordd_client.transcript import verify_receipt
from coordd_client.v1 import ceremony_pb2 as pb
from tests.support.infra import IN_CI
from tests.support.process import COORDCTL, Daemon
from tests.web.live import SCREENSHOTS, LiveCeremony, http_port

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("COORDD_TEST_CHROMIUM", "/usr/bin/chromium")
# "Within a second": how long a live page may take to show a change in the queue.
LIVE_UPDATE_MS = 1000
STATUS_SLUG = "browser-fleet"


def _require_browser() -> Any:
    problem = ""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "playwright is not installed (pip install -e '.[dev]')"
    if not problem and not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        problem = f"no chromium at {CHROMIUM} (apt-get install -y chromium)"
    if problem:
        if IN_CI:
            pytest.fail(f"{problem} (CI=true: the browser tests must run)")
        pytest.skip(problem)
    return sync_playwright


@pytest.fixture(scope="module")
def screenshots() -> Iterator[dict[str, bytes]]:
    shots: dict[str, bytes] = {}
    yield shots
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, data in shots.items():
        (SCREENSHOTS / f"{name}.png").write_bytes(data)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    sync_playwright = _require_browser()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("web-daemon")
    d = Daemon(root / "data", "--http", "127.0.0.1:0").wait_ready()
    try:
        d.http_port = http_port(d)  # type: ignore[attr-defined]
        yield d
    finally:
        d.terminate()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, locale="de-DE")
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield pg
        # A CSP violation (an inline script or style) shows up as a console error.
        assert not errors, errors
    finally:
        context.close()


def _url(daemon: Daemon, path: str) -> str:
    return f"http://127.0.0.1:{daemon.http_port}{path}"  # type: ignore[attr-defined]


def test_the_public_ceremony_page_updates_within_a_second_when_the_queue_moves(
    daemon, page, chromium, screenshots
):
    from playwright.sync_api import expect

    live = LiveCeremony(daemon)
    try:
        alice, bob = live.participant(), live.participant()
        page.goto(_url(daemon, f"/ceremonies/{live.id}"))
        expect(page.locator("#live")).to_have_attribute("data-connected", "true")
        expect(page.get_by_test_id("queue-length")).to_have_text("0")
        first = live.join(alice)
        expect(page.get_by_test_id("current")).to_contain_text(first.name, timeout=LIVE_UPDATE_MS)
        live.join(bob)
        expect(page.get_by_test_id("queue-length")).to_have_text("1", timeout=LIVE_UPDATE_MS)
        live.contribute(alice)
        # Verification runs after the upload (and takes longer on a loaded machine): the page's
        # second starts when the daemon has recorded the contribution and the queue moves.
        live.wait_recorded(2)
        expect(page.get_by_test_id("contribution-count")).to_have_text("2", timeout=LIVE_UPDATE_MS)
        expect(page.get_by_test_id("queue-length")).to_have_text("0", timeout=LIVE_UPDATE_MS)
        # Times are shown in the viewer's locale (de-DE here), not as the UTC text the server wrote.
        assert "UTC" not in page.locator("#live time").first.inner_text()
        screenshots["ceremony"] = page.screenshot(full_page=True)
        page.goto(_url(daemon, "/ceremonies"))
        expect(page.get_by_role("link", name="Browser-tested ceremony").first).to_be_visible()
        screenshots["ceremonies"] = page.screenshot(full_page=True)
        # A phone, in the dark theme the system asks for.
        phone = chromium.new_context(
            viewport={"width": 390, "height": 844}, color_scheme="dark", is_mobile=True
        )
        try:
            small = phone.new_page()
            small.goto(_url(daemon, f"/ceremonies/{live.id}"))
            background = small.evaluate("getComputedStyle(document.body).backgroundColor")
            assert background == "rgb(13, 17, 23)"
            width = small.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
            screenshots["ceremony-phone-dark"] = small.screenshot(full_page=True)
        finally:
            phone.close()
    finally:
        live.close()


def test_a_contributors_receipt_on_the_page_verifies_and_coordctl_verifies_the_transcript(daemon, page):
    live = LiveCeremony(daemon, title="Receipt ceremony")
    try:
        alice = live.participant()
        live.join(alice)
        mine = live.contribute(alice)
        page.goto(_url(daemon, f"/ceremonies/{live.id}"))
        row = page.get_by_test_id("contribution").filter(has_text=mine.hash_hex[:16])
        row.locator("summary").click()
        payload = row.get_by_test_id("receipt-payload").inner_text()
        signature = row.get_by_test_id("receipt-signature").inner_text()
        key_id = page.get_by_test_id("key-id").inner_text()
        key = live.stub.GetCoordinatorKey(pb.GetCoordinatorKeyRequest())
        fields = verify_receipt(key.public_key, payload.encode(), base64.b64decode(signature))
        assert (fields["contribution"], fields["hash"]) == (mine.name, mine.hash_hex)
        # The command the page shows, with the key id it shows.
        out = subprocess.run(
            [
                COORDCTL,
                "--target",
                daemon.target,
                "ceremony",
                "transcript",
                live.id,
                "--verify",
                "--key-id",
                key_id,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0 and "transcript verified" in out.stdout, out.stdout + out.stderr
    finally:
        live.close()


def test_the_pages_read_without_javascript(daemon, chromium):
    live = LiveCeremony(daemon, title="No-script ceremony")
    context = chromium.new_context(java_script_enabled=False)
    try:
        live.join(live.participant())
        page = context.new_page()
        page.goto(_url(daemon, f"/ceremonies/{live.id}"))
        assert page.get_by_test_id("current").inner_text().startswith(live.ceremony.name + "/participants/")
        assert "UTC" in page.locator("time").first.inner_text()
    finally:
        context.close()
        live.close()


def _failed_job(daemon: Daemon, submitter_key: str) -> str:
    import grpc

    from coordd_client.v1 import job_pb2, job_pb2_grpc
    from tests.support.process import admin_create_user
    from tests.support.server import bearer

    provider = admin_create_user(daemon, f"gpu-{os.urandom(4).hex()}@example.com", "provider")[
        "api_key_secret"
    ]
    with grpc.insecure_channel(daemon.target) as channel:
        stub = job_pb2_grpc.JobServiceStub(channel)
        job = stub.SubmitJob(
            job_pb2.SubmitJobRequest(
                kind=job_pb2.JOB_KIND_INFERENCE,
                model_ref="hf://org/model@1",
                input=job_pb2.Payload(data=b"x"),
            ),
            metadata=bearer(submitter_key),
        ).job
        # Other tests' queued jobs may come first (one daemon for the module): fail them too.
        while True:
            (leased,) = stub.ClaimJobs(job_pb2.ClaimJobsRequest(max_jobs=1), metadata=bearer(provider)).jobs
            stub.FailJob(
                job_pb2.FailJobRequest(lease=leased.lease, error="bad weights", retryable=False),
                metadata=bearer(provider),
            )
            if leased.job.name == job.name:
                break
    return job.name.split("/")[1]


def _sign_in(page: Any, daemon: Daemon, email: str) -> None:
    page.goto(_url(daemon, "/console"))
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/console/jobs")


PASSWORD = "operator password 1"


def test_an_operator_signs_in_retries_a_failed_job_and_sees_it_queued(daemon, page, screenshots):
    from playwright.sync_api import expect

    from tests.support.process import admin_create_user

    email = f"ops-{os.urandom(4).hex()}@example.com"
    admin = admin_create_user(daemon, email, "admin", password=PASSWORD)
    jid = _failed_job(daemon, admin["api_key_secret"])
    page.goto(_url(daemon, "/console/jobs"))
    expect(page).to_have_url(_url(daemon, "/console/login?next=/console/jobs"))
    screenshots["console-login"] = page.screenshot(full_page=True)
    _sign_in(page, daemon, email)
    page.get_by_label("State").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_test_id("job-state")).to_have_text(["failed"])
    screenshots["console-jobs"] = page.screenshot(full_page=True)
    page.get_by_role("link", name=f"jobs/{jid}").click()
    page.once("dialog", lambda dialog: dialog.accept())  # "Retry jobs/... ?"
    page.get_by_test_id("retry").click()
    expect(page.get_by_test_id("done")).to_have_text("Done: requeued.")
    expect(page.get_by_test_id("job-state")).to_have_text("queued")
    screenshots["console-job"] = page.screenshot(full_page=True)
    # A forged POST (the session's cookie, no CSRF token) is refused and changes nothing.
    forged = page.context.request.post(_url(daemon, f"/console/jobs/{jid}/cancel"), form={"reason": "x"})
    assert forged.status == 403 and "CSRF" in forged.text()
    page.reload()
    expect(page.get_by_test_id("job-state")).to_have_text("queued")
    # The retry is in the audit log, which the admin reads in the console.
    page.get_by_role("link", name="Audit log").click()
    page.get_by_label("Filter").fill('action = "web.action"')
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_test_id("audit-row").filter(has_text=f"jobs/{jid}")).to_have_count(1)
    screenshots["console-audit"] = page.screenshot(full_page=True)


def test_a_participant_cannot_reach_the_consoles_actions(daemon, page):
    from playwright.sync_api import expect

    from tests.support.process import admin_create_user

    email = f"p-{os.urandom(4).hex()}@example.com"
    made = admin_create_user(daemon, email, "participant", password=PASSWORD)
    jid = _failed_job(daemon, made["api_key_secret"])
    _sign_in(page, daemon, email)
    page.goto(_url(daemon, f"/console/jobs/{jid}"))
    expect(page.get_by_test_id("job-state")).to_have_text("failed")
    expect(page.get_by_test_id("retry")).to_have_count(0)
    # Even with the page's own CSRF token, the action needs the admin role (RequeueJob's policy).
    token = page.locator("form[action='/console/logout'] input[name=csrf_token]").get_attribute("value")
    refused = page.context.request.post(
        _url(daemon, f"/console/jobs/{jid}/requeue"), form={"csrf_token": token}
    )
    assert refused.status == 403 and "admin" in refused.text()
    page.reload()
    expect(page.get_by_test_id("job-state")).to_have_text("failed")


def test_a_project_status_page_shows_a_node_going_down(daemon, page, screenshots):
    import time

    import grpc
    from google.protobuf import field_mask_pb2
    from playwright.sync_api import expect

    from coordd_client.v1 import auth_pb2, auth_pb2_grpc, node_pb2, node_pb2_grpc
    from tests.node.helpers import secs
    from tests.support.process import admin_create_user
    from tests.support.server import bearer

    email = f"op-{os.urandom(4).hex()}@example.com"
    admin_create_user(daemon, email, "node_operator", password=PASSWORD)
    with grpc.insecure_channel(daemon.target) as channel:
        login = auth_pb2_grpc.AuthServiceStub(channel).Login(
            auth_pb2.LoginRequest(email=email, password=PASSWORD)
        )
        md = bearer(login.access_token)  # nodes are registered with a login token
        stub = node_pb2_grpc.NodeServiceStub(channel)
        policy = node_pb2.HealthPolicy(
            heartbeat_interval=secs(1),
            misses=2,
            grace=secs(1),
            successes_before_up=2,
            mass_outage_min_nodes=3,
        )
        project = stub.CreateProject(
            node_pb2.CreateProjectRequest(
                display_name="Browser fleet", slug=STATUS_SLUG, health_policy=policy
            ),
            metadata=md,
        ).project
        reply = stub.RegisterNode(
            node_pb2.RegisterNodeRequest(project=project.name, display_name="gpu-01", region="eu-west"),
            metadata=md,
        )
        for _ in range(2):
            stub.Heartbeat(node_pb2.HeartbeatRequest(), metadata=bearer(reply.api_key_secret))
        pid = project.name.split("/")[1]
        # Not opted in yet: no page, as for a project that does not exist.
        assert page.context.request.get(_url(daemon, f"/status/{pid}")).status == 404
        # The owner opts in (coordctl project update --public-status true does the same).
        stub.UpdateProject(
            node_pb2.UpdateProjectRequest(
                project=node_pb2.Project(name=project.name, public_status=True),
                update_mask=field_mask_pb2.FieldMask(paths=["public_status"]),
            ),
            metadata=md,
        )
    page.goto(_url(daemon, f"/status/{pid}"))
    expect(page.get_by_test_id("node-status")).to_have_text("UP")
    expect(page.locator(".bars span")).to_have_count(90)
    screenshots["status-up"] = page.screenshot(full_page=True)
    # The node stops beating: after 2 missed beats and the grace the daemon marks it DOWN.
    deadline = time.monotonic() + 30
    while page.get_by_test_id("node-status").inner_text() != "DOWN" and time.monotonic() < deadline:
        time.sleep(0.5)
        page.reload()
    expect(page.get_by_test_id("node-status")).to_have_text("DOWN")
    expect(page.get_by_text("ongoing")).to_be_visible()
    screenshots["status-down"] = page.screenshot(full_page=True)


def test_a_competition_page_shows_its_seats(daemon, page, screenshots):
    from datetime import UTC, datetime

    import grpc
    from playwright.sync_api import expect

    from coordd_client.v1 import competition_pb2, competition_pb2_grpc
    from tests.competition.support import spec
    from tests.support.process import admin_create_user
    from tests.support.server import bearer

    organizer = admin_create_user(daemon, f"org-{os.urandom(4).hex()}@example.com", "organizer")
    md = bearer(organizer["api_key_secret"])
    with grpc.insecure_channel(daemon.target) as channel:
        stub = competition_pb2_grpc.CompetitionServiceStub(channel)
        comp = stub.CreateCompetition(
            competition_pb2.CreateCompetitionRequest(competition=spec(datetime.now(UTC), capacity=5)),
            metadata=md,
        ).competition
        stub.PublishCompetition(competition_pb2.PublishCompetitionRequest(name=comp.name), metadata=md)
    page.goto(_url(daemon, f"/competitions/{comp.name.split('/')[1]}"))
    expect(page.get_by_test_id("seats-left")).to_have_text("5")
    expect(page.get_by_test_id("waitlist")).to_have_text("0")
    screenshots["competition"] = page.screenshot(full_page=True)


def _fleet_with_a_node(daemon: Daemon, email: str, slug: str) -> tuple[str, str]:
    """A node_operator's project (fast health policy) with one node that beat twice and
    then stopped: the daemon's scheduler marks it DOWN a few seconds later."""
    import grpc

    from coordd_client.v1 import auth_pb2, auth_pb2_grpc, node_pb2, node_pb2_grpc
    from tests.node.helpers import secs
    from tests.support.server import bearer

    with grpc.insecure_channel(daemon.target) as channel:
        login = auth_pb2_grpc.AuthServiceStub(channel).Login(
            auth_pb2.LoginRequest(email=email, password=PASSWORD)
        )
        md = bearer(login.access_token)
        stub = node_pb2_grpc.NodeServiceStub(channel)
        policy = node_pb2.HealthPolicy(
            heartbeat_interval=secs(1),
            misses=2,
            grace=secs(1),
            successes_before_up=2,
            mass_outage_min_nodes=3,
        )
        project = stub.CreateProject(
            node_pb2.CreateProjectRequest(display_name="Alert fleet", slug=slug, health_policy=policy),
            metadata=md,
        ).project
        reply = stub.RegisterNode(
            node_pb2.RegisterNodeRequest(project=project.name, display_name="gpu-02"), metadata=md
        )
        for _ in range(2):
            stub.Heartbeat(node_pb2.HeartbeatRequest(), metadata=bearer(reply.api_key_secret))
    return project.name.split("/")[1], reply.node.name.split("/")[1]


def test_an_operator_acknowledges_an_incident_and_silences_a_node_and_a_participant_cannot(
    daemon, page, screenshots
):
    import time

    from playwright.sync_api import expect

    from tests.support.process import admin_create_user

    email = f"op-{os.urandom(4).hex()}@example.com"
    admin_create_user(daemon, email, "node_operator", password=PASSWORD)
    pid, nid = _fleet_with_a_node(daemon, email, f"alerts-{os.urandom(3).hex()}")
    _sign_in(page, daemon, email)
    alerts = _url(daemon, f"/console/projects/{pid}/alerts")
    page.goto(alerts)
    deadline = time.monotonic() + 30
    while page.get_by_test_id("acknowledge").count() == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        page.reload()
    expect(page.get_by_test_id("incident-row")).to_have_count(1)
    page.get_by_test_id("acknowledge").click()
    expect(page.get_by_test_id("done")).to_have_text("Done: acknowledged.")
    expect(page.get_by_test_id("incident-ack")).to_contain_text("by users/")
    page.get_by_label("Matches").select_option(f"nodes/{nid}")
    page.get_by_label("Minutes").fill("45")
    page.get_by_label("Reason").fill("swapping the disk")
    page.get_by_test_id("create-silence").click()
    expect(page.get_by_test_id("done")).to_have_text("Done: silenced.")
    expect(page.get_by_test_id("silence-state")).to_contain_text("active")
    screenshots["console-alerts"] = page.screenshot(full_page=True)
    page.get_by_test_id("end-silence").click()
    expect(page.get_by_test_id("done")).to_have_text("Done: silence ended.")
    expect(page.get_by_test_id("silence-state")).to_have_text("ended")
    # A participant: no incidents page, and a POST with their own CSRF token is refused.
    page.context.clear_cookies()
    other = f"p-{os.urandom(4).hex()}@example.com"
    admin_create_user(daemon, other, "participant", password=PASSWORD)
    _sign_in(page, daemon, other)
    token = page.locator("form[action='/console/logout'] input[name=csrf_token]").get_attribute("value")
    assert page.context.request.get(alerts).status == 403
    refused = page.context.request.post(
        _url(daemon, f"/console/projects/{pid}/silences"),
        form={"csrf_token": token, "target": "", "minutes": "10", "reason": "x"},
    )
    assert refused.status == 403 and "node_operator" in refused.text()
