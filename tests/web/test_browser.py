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
