"""Log lines never carry a credential: no frame locals, redaction at any depth."""

from __future__ import annotations

import structlog

from coordd.logging import REDACTED, redact, scrub
from coordd_client.v1 import auth_pb2

LOCAL_SECRET = "hunter2-the-local-password"


def _fail_with_a_secret_in_a_local() -> None:
    password = LOCAL_SECRET  # noqa: F841 - the point: a credential in a frame's locals
    raise RuntimeError("the database said no")


def _log_a_failure() -> None:
    try:
        _fail_with_a_secret_in_a_local()
    except RuntimeError as exc:
        structlog.get_logger("coordd.test").error("rpc failed", exc_info=exc)


def test_json_tracebacks_name_the_frames_but_not_their_local_variables(json_logs):
    _log_a_failure()
    [line] = json_logs.events("rpc failed")
    [trace] = line["exception"]
    assert trace["exc_type"] == "RuntimeError" and trace["exc_value"] == "the database said no"
    assert any(f["name"] == "_fail_with_a_secret_in_a_local" for f in trace["frames"])
    assert all("locals" not in f for f in trace["frames"])
    assert LOCAL_SECRET not in json_logs.text


def test_console_tracebacks_carry_no_local_variables_either(console_logs):
    _log_a_failure()
    assert "_fail_with_a_secret_in_a_local" in console_logs.text
    assert LOCAL_SECRET not in console_logs.text


def test_credential_fields_are_redacted_at_any_depth(json_logs):
    structlog.get_logger("coordd.test").warning(
        "call",
        password="p-top",
        detail={"user": {"api_key_secret": "p-nested", "labels": [{"access_token": "p-list"}]}},
        headers=(("authorization", "Bearer p-header"), ("x-request-id", "r-1")),
        sealing_key=b"p-bytes",
        jwt_secret="p-jwt",
        config={"database_url": "postgresql://app:p-url@db:5432/coordd"},
    )
    [line] = json_logs.events("call")
    assert line["password"] == REDACTED
    assert line["detail"]["user"]["api_key_secret"] == REDACTED
    assert line["detail"]["user"]["labels"][0]["access_token"] == REDACTED
    assert line["headers"] == [["authorization", REDACTED], ["x-request-id", "r-1"]]
    assert line["config"]["database_url"] == f"postgresql://app:{REDACTED}@db:5432/coordd"
    assert "p-" not in json_logs.text.replace('"p-', "")  # no value starting p- survived


def test_credentials_inside_free_text_are_masked():
    jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl"
    api_key = "ck_" + "A1b2C3d4" * 5
    text = (
        f"authorization: Bearer {jwt}; key {api_key}; hash $argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA;"
        " Principal(password='hunter2', email='a@example.com') password=hunter3&next=1"
        ' {"secret": "hunter4"}'
    )
    masked = scrub(text)
    for secret in (jwt, api_key, "aGFzaA", "hunter2", "hunter3", "hunter4"):
        assert secret not in masked
    assert "a@example.com" in masked and "next=1" in masked
    # Source lines in tracebacks stay readable.
    assert scrub("    secret = secrets.token_urlsafe(32)") == "    secret = secrets.token_urlsafe(32)"


def test_requests_are_never_logged_whole():
    request = auth_pb2.LoginRequest(email="a@example.com", password="hunter2")
    event = redact(None, "info", {"event": "x", "request": request, "wrapped": [request]})
    assert event["request"] == "<coordd.v1.LoginRequest>"
    assert event["wrapped"] == ["<coordd.v1.LoginRequest>"]


def test_other_objects_are_rendered_masked():
    class Session:
        def __repr__(self) -> str:
            return "Session(user='u1', access_token='eyJx.eyJy.z')"

    event = redact(None, "info", {"event": "x", "login": Session()})
    assert event["login"] == f"Session(user='u1', access_token='{REDACTED}')"
