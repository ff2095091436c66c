"""Bad input gets a canonical status with a request id, never UNKNOWN or INTERNAL."""

from __future__ import annotations

import grpc
from prometheus_client import REGISTRY

from coordd.api.errors import MAX_MESSAGE_CHARS, build_status, clip
from coordd_client.v1 import auth_pb2
from tests.helpers import rpc_error
from tests.support.server import bearer

GARBAGE = b"\xff\xff\xff\xff\x0f"  # a truncated varint tag: not a protobuf message


def _malformed_count(method: str) -> float:
    value = REGISTRY.get_sample_value("coordd_malformed_requests_total", {"method": method})
    return value or 0.0


def _raw_unary(server, method: str):
    return server.channel.unary_unary(method, request_serializer=None, response_deserializer=None)


def _assert_logged(json_logs, method: str) -> None:
    [line] = [e for e in json_logs.events("rpc", wait_for=1) if e["method"] == method]
    assert line["code"] == "INVALID_ARGUMENT" and line["reason"] == "MALFORMED_REQUEST"
    assert line["request_id"] and line["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:"))


def test_undecodable_unary_request_is_invalid_argument_with_request_id_log_and_metric(server, json_logs):
    method = "/coordd.v1.AuthService/Login"
    before = _malformed_count(method)
    failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, _raw_unary(server, method), GARBAGE)
    assert failure.reason == "MALFORMED_REQUEST"
    assert "Traceback" not in failure.details and "DecodeError" not in failure.details
    assert _malformed_count(method) == before + 1
    _assert_logged(json_logs, method)


def test_undecodable_server_stream_request_is_invalid_argument(server, json_logs):
    _, token = server.make_user("participant")
    method = "/coordd.v1.StatusService/WatchEvents"
    stream = server.channel.unary_stream(method, request_serializer=None, response_deserializer=None)
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, lambda: list(stream(GARBAGE, metadata=bearer(token), timeout=10))
    )
    assert failure.reason == "MALFORMED_REQUEST"
    _assert_logged(json_logs, method)


def test_undecodable_client_stream_message_is_invalid_argument(server, json_logs):
    _, token = server.make_user("participant")
    method = "/coordd.v1.CeremonyService/UploadContribution"
    before = _malformed_count(method)
    upload = server.channel.stream_unary(method, request_serializer=None, response_deserializer=None)
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, upload, iter([GARBAGE]), metadata=bearer(token), timeout=10
    )
    assert failure.reason == "MALFORMED_REQUEST"
    assert "Traceback" not in failure.details
    assert _malformed_count(method) == before + 1
    _assert_logged(json_logs, method)


def test_an_8_kb_name_echoed_into_an_error_still_reaches_the_client_capped(server):
    _, token = server.make_user("participant")
    name = "apiKeys/" + "x" * 8192
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        server.auth.RevokeApiKey,
        auth_pb2.RevokeApiKeyRequest(name=name),
        metadata=bearer(token),
    )
    assert len(failure.details) <= MAX_MESSAGE_CHARS and failure.details.endswith("…")
    assert failure.details.startswith("name must look like apiKeys/{id}")
    assert "name" in failure.violations


def test_every_rpc_log_line_names_the_peer(server, json_logs):
    server.sign_up()
    rpc_error(grpc.StatusCode.UNAUTHENTICATED, server.auth.WhoAmI, auth_pb2.WhoAmIRequest())
    lines = json_logs.events("rpc", wait_for=2)
    assert {line["code"] for line in lines} == {"OK", "UNAUTHENTICATED"}
    assert all(line["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:")) for line in lines)


def test_status_details_stay_within_budget_however_many_violations():
    many = [(f"items[{i}]." + "f" * 300, "d" * 2000) for i in range(200)]
    status = build_status(grpc.StatusCode.INVALID_ARGUMENT, "m" * 10_000, "BAD", {"k": "v" * 9000}, many)
    details = dict(status.trailing_metadata)["grpc-status-details-bin"]
    assert len(details) <= 3072
    assert len(status.details) == MAX_MESSAGE_CHARS
    assert clip("é" * 600).encode().__len__() <= 2 * MAX_MESSAGE_CHARS
    assert clip("short") == "short"
