"""Public ceremony pages and their JSON: what a contributor or an onlooker sees, without a login
and without JavaScript, on SQLite and on PostgreSQL + Redis."""

from __future__ import annotations

import base64
import html
import re
import subprocess
import sys

import pytest

from coordd_client.transcript import key_id, verify_receipt
from coordd_client.v1 import ceremony_pb2 as pb
from tests.ceremony.e2e_ceremony.helpers import Ceremonies
from tests.support.server import bearer
from tests.web.helpers import EventStream, marked, wait_until


@pytest.fixture
def cer(web_server):
    return Ceremonies(web_server)


def _participants(server, n):
    return [server.make_user("participant")[1] for _ in range(n)]


def test_the_web_server_is_off_unless_a_setting_turns_it_on(server):
    assert server.app.web is None and server.app.http_port == 0


def test_the_ceremony_list_links_every_ceremony_and_its_json_lists_them(web_server, browser, cer):
    ceremony, _ = cer.open(circuits=1)
    cid = ceremony.name.split("/")[1]
    page = browser.get("/ceremonies")
    assert page.status == 200 and f'href="/ceremonies/{cid}"' in page.text
    assert html.escape(ceremony.title) in page.text
    listed = browser.get("/api/ceremonies").json()["ceremonies"]
    assert [(c["name"], c["state"]) for c in listed] == [(ceremony.name, "OPENED")]
    assert browser.get("/api/ceremonies?state=CLOSED").json()["ceremonies"] == []


def test_the_ceremony_page_shows_the_queue_the_current_contributor_and_the_wait(web_server, browser, cer):
    ceremony, (circuit,) = cer.open(circuits=1)
    cid = ceremony.name.split("/")[1]
    alice, bob, carol = _participants(web_server, 3)
    first = cer.join(ceremony, alice)
    cer.join(ceremony, bob)
    cer.join(ceremony, carol)
    page = browser.get(f"/ceremonies/{cid}").text
    assert marked(page, "circuit-queue") == ["2"]
    assert marked(page, "queue-length") == ["2"]
    assert first.name in marked(page, "current")[0]
    assert marked(page, "wait") == ["unknown until the first contribution"]
    doc = browser.get(f"/api/ceremonies/{cid}").json()
    (k,) = doc["circuits"]
    assert (k["name"], k["queue_length"], k["current_contributor"]) == (circuit.name, 2, first.name)
    assert k["estimated_wait_seconds"] is None
    # Alice contributes: her turn is over, Bob's starts, and now there is a per-turn average.
    cer.contribute(ceremony, alice)
    doc = browser.get(f"/api/ceremonies/{cid}").json()
    (k,) = doc["circuits"]
    assert k["queue_length"] == 1 and k["current_contributor"] != first.name
    assert k["estimated_wait_seconds"] is not None and k["estimated_wait_seconds"] >= 0
    assert [x["index"] for x in k["contributions"]] == [0, 1]
    assert k["contributions"][1]["contributor"] == first.name


def test_every_contribution_shows_its_hash_and_a_receipt_that_verifies_with_the_coordinator_key(
    web_server, browser, cer
):
    ceremony, _ = cer.open(circuits=1)
    cid = ceremony.name.split("/")[1]
    (alice,) = _participants(web_server, 1)
    cer.join(ceremony, alice)
    cer.contribute(ceremony, alice)
    key = cer.stub.GetCoordinatorKey(pb.GetCoordinatorKeyRequest())
    transcript = cer.transcript(ceremony)
    hashes = [x.hash_hex for x in transcript.circuits[0].contributions]
    page = browser.get(f"/ceremonies/{cid}").text
    assert marked(page, "hash") == hashes
    assert marked(page, "key-id") == [key.key_id]
    payloads = [html.unescape(p) for p in marked(page, "receipt-payload")]
    signatures = marked(page, "receipt-signature")
    assert len(payloads) == len(signatures) == 2
    for payload, signature, expected in zip(payloads, signatures, hashes, strict=True):
        fields = verify_receipt(key.public_key, payload.encode(), base64.b64decode(signature))
        assert fields["hash"] == expected
    forged = payloads[1].replace('"valid":true', '"valid":false').encode()
    with pytest.raises(Exception, match="does not verify"):
        verify_receipt(key.public_key, forged, base64.b64decode(signatures[1]))


def test_the_downloaded_transcript_verifies_offline_with_the_command_the_page_shows(
    web_server, browser, cer, tmp_path
):
    ceremony, _ = cer.open(circuits=2)
    cid = ceremony.name.split("/")[1]
    alice, bob = _participants(web_server, 2)
    cer.join(ceremony, alice)
    cer.join(ceremony, bob)
    cer.contribute(ceremony, alice)
    cer.contribute(ceremony, bob)
    download = browser.get(f"/ceremonies/{cid}/transcript.json")
    assert download.status == 200 and "attachment" in download.headers["content-disposition"]
    doc = download.json()
    assert key_id(base64.b64decode(doc["coordinator_key"]["public_key"])) == web_server.rt.signer.key_id
    page = browser.get(f"/ceremonies/{cid}").text
    # The page's own instructions: the `python3 - FILE KEY <<'EOF' ... EOF` block, run as shown.
    block = html.unescape(re.search(r"<pre><code>(python3 - .*?)</code></pre>", page, re.S).group(1))
    script = block.split("<<'EOF'\n", 1)[1].rsplit("EOF", 1)[0]
    path = tmp_path / "transcript.json"
    path.write_bytes(download.body)
    run = [sys.executable, "-", str(path), web_server.rt.signer.key_id]
    ok = subprocess.run(run, input=script, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "every receipt verifies" in ok.stdout, ok.stderr
    # A tampered transcript (one hash changed) fails the same check.
    doc["circuits"][0]["contributions"][1]["hash"] = "00" * 64
    path.write_text(__import__("json").dumps(doc))
    bad = subprocess.run(run, input=script, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0


def test_the_live_stream_sends_the_page_again_when_the_queue_moves(web_server, cer):
    ceremony, _ = cer.open(circuits=1)
    cid = ceremony.name.split("/")[1]
    alice, bob = _participants(web_server, 2)
    cer.join(ceremony, alice)
    stream = EventStream(web_server.app.http_port, f"/ceremonies/{cid}/events")
    try:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert marked(stream.next_event(), "queue-length") == ["0"]
        cer.join(ceremony, bob)
        assert marked(stream.next_event(), "queue-length") == ["1"]
        cer.stub.LeaveCeremony(pb.LeaveCeremonyRequest(ceremony=ceremony.name), metadata=bearer(bob))
        assert marked(stream.next_event(), "queue-length") == ["0"]
    finally:
        stream.close()


def test_many_live_pages_on_one_ceremony_share_one_read_per_change(web_server, cer):
    ceremony, _ = cer.open(circuits=1)
    cid = ceremony.name.split("/")[1]
    streams = [EventStream(web_server.app.http_port, f"/ceremonies/{cid}/events") for _ in range(20)]
    try:
        for s in streams:
            s.next_event()
        boards = web_server.app.web.boards
        before = boards.reads
        (alice,) = _participants(web_server, 1)
        cer.join(ceremony, alice)
        for s in streams:
            assert "participants/" in marked(s.next_event(), "current")[0]
        # One join: the board is read again once or twice (events can arrive in two batches), not 20 times.
        assert boards.reads - before <= 3
    finally:
        for s in streams:
            s.close()


def test_pages_carry_a_strict_content_security_policy_and_no_inline_script(web_server, browser, cer):
    ceremony, _ = cer.open(circuits=1)
    cid = ceremony.name.split("/")[1]
    for path in ("/ceremonies", f"/ceremonies/{cid}", "/ceremonies/nope", f"/api/ceremonies/{cid}"):
        reply = browser.get(path)
        csp = reply.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp and reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["server"] == "coordd"
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", reply.text)
        assert not re.search(r"<[^>]+\s(style|on[a-z]+)=", reply.text)  # no inline style or handler


def test_unknown_or_malformed_ceremonies_are_not_found_as_json_or_as_a_page(browser):
    assert browser.get("/api/ceremonies/01ABCDEFGHJKMNPQRSTVWXYZ00").json()["error"]["reason"] == "NOT_FOUND"
    page = browser.get("/ceremonies/%3Cscript%3E")
    assert page.status == 404 and "<script>" not in page.text
    assert browser.get("/ceremonies/x/events").status == 404
    assert browser.get("/api/ceremonies?page_token=garbage").status == 400


def test_one_client_address_may_hold_only_so_many_live_pages(web_server, cer):
    import dataclasses

    ceremony, _ = cer.open(circuits=1)
    cid = ceremony.name.split("/")[1]
    web_server.rt.settings = dataclasses.replace(web_server.rt.settings, http_max_streams_per_peer=2)
    port = web_server.app.http_port
    streams = [EventStream(port, f"/ceremonies/{cid}/events") for _ in range(2)]
    try:
        for s in streams:
            s.next_event()
        refused = EventStream(port, f"/ceremonies/{cid}/events")
        assert refused.response.status == 429
        refused.close()
        streams.pop().close()
        # The closed stream's place is free again once the daemon notices (its next write).
        cer.join(ceremony, web_server.make_user("participant")[1])
        streams[0].next_event()
        again = wait_until(lambda: _opened(port, cid))
        streams.append(again)
    finally:
        for s in streams:
            s.close()


def _opened(port, cid):
    stream = EventStream(port, f"/ceremonies/{cid}/events")
    if stream.response.status == 200:
        return stream
    stream.close()
    return None
