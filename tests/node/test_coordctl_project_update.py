"""coordctl project update: the owner opts a project in to its public status page (and out
again) against a real daemon; the page follows."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import coordd_client
from coordd_client.v1 import node_pb2
from tests.node.test_coordctl_monitoring import run
from tests.web.live import http_port


def _status(port: int, pid: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status/{pid}", timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_coordctl_project_update_turns_the_public_status_page_on_and_off(tmp_path):
    from tests.support.process import Daemon

    d = Daemon(tmp_path / "data", "--http", "127.0.0.1:0").wait_ready()
    try:
        port = http_port(d)
        run(d, "signup", "--email", "ops@example.com", "--role", "node_operator")
        token = json.loads((d.data_dir.parent / "cfg" / "coordctl" / "config.json").read_text())["token"]
        client = coordd_client.connect(d.target, token=token)
        project = client.node.CreateProject(
            node_pb2.CreateProjectRequest(display_name="Fleet", slug="fleet")
        ).project
        pid = project.name.split("/")[1]
        assert not project.public_status and _status(port, pid) == 404
        on = run(d, "project", "update", project.name, "--public-status", "true")
        assert on["project"]["public_status"] is True
        assert _status(port, pid) == 200
        text = run(d, "project", "update", project.name, "--public-status", "false", json_out=False)
        assert "public status page off" in str(text)
        assert _status(port, pid) == 404
    finally:
        d.stop()
