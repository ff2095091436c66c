"""Talking to coordd's web pages as a browser without JavaScript would: plain HTTP."""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    set_cookies: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Browser:
    """Cookies kept per client, like a browser's jar (HttpOnly or not: we are the browser)."""

    port: int
    cookies: dict[str, str] = field(default_factory=dict)

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None, headers: Any = None
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            all_headers = dict(headers or {})
            if self.cookies:
                all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            body = None
            if form is not None:
                body = urllib.parse.urlencode(form)
                all_headers["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            data = response.read()
            for name, value in response.getheaders():
                if name.lower() == "set-cookie":
                    pair = value.split(";", 1)[0]
                    key, _, val = pair.partition("=")
                    if val:
                        self.cookies[key.strip()] = val.strip()
                    else:
                        self.cookies.pop(key.strip(), None)
            cookies = [v for k, v in response.getheaders() if k.lower() == "set-cookie"]
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data, cookies)
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, form: dict[str, str], **kw: Any) -> Reply:
        return self.request("POST", path, form=form, **kw)


class EventStream:
    """A server-sent event stream, read event by event."""

    def __init__(self, port: int, path: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.request("GET", path, headers={"Accept": "text/event-stream"})
        self.response = self.conn.getresponse()

    @property
    def headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.response.getheaders()}

    def next_event(self, name: str = "update") -> str:
        """The data of the next event called `name` (comments and other events skipped)."""
        event, data = "", []
        while True:
            line = self.response.readline()
            if not line:
                raise AssertionError("the event stream ended")
            text = line.decode().rstrip("\n")
            if not text:
                if event == name:
                    return "\n".join(data)
                event, data = "", []
            elif text.startswith("event: "):
                event = text[7:]
            elif text.startswith("data: "):
                data.append(text[6:])

    def close(self) -> None:
        self.conn.close()


def marked(html: str, name: str) -> list[str]:
    """The text of every element marked data-testid=name (tags inside stripped)."""
    out = []
    for match in re.finditer(rf'<(\w+)[^>]*data-testid="{re.escape(name)}"[^>]*>(.*?)</\1>', html, re.S):
        out.append(re.sub(r"<[^>]+>", "", match.group(2)).strip())
    return out


def wait_until(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")
