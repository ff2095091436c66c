"""Every request is checked against its descriptor before a servicer sees it: the same answer on
SQLite and PostgreSQL, the field named, nothing written."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from coordd.api.validation import MAX_TIMESTAMP_S, _has_string, check_request
from coordd.core.errors import InvalidArgument
from coordd_client.v1 import auth_pb2, ceremony_pb2, ceremony_pb2_grpc, job_pb2, node_pb2
from tests.helpers import rpc_error
from tests.support.server import bearer


def _violations(request, limit: int = 100) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as info:
        check_request(request, limit)
    return {v.field: v.description for v in info.value.violations}


def test_nul_in_a_nested_or_repeated_string_is_named_by_its_path():
    request = ceremony_pb2.CreateCeremonyRequest(
        title="ok", verifier=ceremony_pb2.Verifier(command="snarkjs\x00zkey")
    )
    assert _violations(request) == {"verifier.command": "must not contain a NUL character"}


def test_a_string_only_a_map_key_can_hold_is_still_checked():
    """Types that cannot hold a string or a time are not walked at all (WhoAmI's request);
    a string reached only through a map's keys still counts."""
    assert not _has_string(auth_pb2.WhoAmIRequest.DESCRIPTOR)
    assert _has_string(node_pb2.HeartbeatRequest.DESCRIPTOR)  # map<string, double> metrics
    check_request(auth_pb2.WhoAmIRequest(), 100)
    request = node_pb2.HeartbeatRequest(metrics={"load\x00": 1.0})
    assert _violations(request) == {"metrics[key]": "must not contain a NUL character"}


def test_in_a_large_batch_the_items_with_a_bad_string_or_time_are_named_and_only_they():
    def complete(
        job: str, lease_id: str = "l", expire_s: int = 1_800_000_000, data: bytes = b"ok"
    ) -> job_pb2.CompleteJobRequest:
        lease = job_pb2.Lease(job=job, attempt=1, lease_id=lease_id)
        lease.expire_time.seconds = expire_s
        return job_pb2.CompleteJobRequest(lease=lease, output=job_pb2.Payload(data=data))

    items = [complete(f"jobs/{i}") for i in range(100)]  # the whole request is over the limit
    items[3] = complete("jobs/3", data=b"\x00 bytes may hold NUL")
    items[7] = complete("jobs/7", lease_id="x" * 101)
    items[42] = complete("jobs/42\x00")
    items[99] = complete("jobs/99", expire_s=-1)
    found = _violations(job_pb2.BatchCompleteJobsRequest(requests=items))
    assert found == {
        "requests[7].lease.lease_id": "at most 100 characters",
        "requests[42].lease.job": "must not contain a NUL character",
        "requests[99].lease.expire_time": "must be between 1970-01-01T00:00:00Z and 2999-12-31T23:59:59Z",
    }
    check_request(job_pb2.BatchCompleteJobsRequest(requests=[complete(f"jobs/{i}") for i in range(100)]), 100)


def test_in_a_small_batch_only_the_times_set_are_looked_at_and_bad_ones_are_named():
    """A request within the string limit and without NUL is walked for times only: the
    fields that can hold one and are set, however deep or repeated."""
    items = [job_pb2.SubmitJobRequest(model_ref="m") for _ in range(4)]
    items[1].heartbeat_timeout.CopyFrom(duration_pb2.Duration(seconds=5, nanos=-1))
    items[2].schedule_time.seconds = MAX_TIMESTAMP_S + 1
    items[3].unique.window.seconds = 10**11
    found = _violations(job_pb2.BatchSubmitJobsRequest(requests=items), limit=10_000)
    assert found == {
        "requests[1].heartbeat_timeout": "nanos must be in (-1e9, 1e9) with the sign of seconds",
        "requests[2].schedule_time": "must be between 1970-01-01T00:00:00Z and 2999-12-31T23:59:59Z",
        "requests[3].unique.window": "must be at most 100 years",
    }
    items[1].heartbeat_timeout.nanos = 1
    items[2].schedule_time.seconds = MAX_TIMESTAMP_S
    items[3].unique.window.seconds = 60
    check_request(job_pb2.BatchSubmitJobsRequest(requests=items), 10_000)


def _type_with_repeated_times():  # type: ignore[no-untyped-def]
    """A message type no coordd proto has yet: repeated Timestamps and Durations, directly."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    for dependency in (timestamp_pb2, duration_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        dependency.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    file = descriptor_pb2.FileDescriptorProto(
        name="validation_test.proto", package="validation_test", syntax="proto3",
        dependency=["google/protobuf/timestamp.proto", "google/protobuf/duration.proto"],
    )  # fmt: skip
    message = file.message_type.add(name="Times")
    for number, (name, type_name) in enumerate(
        [("at", ".google.protobuf.Timestamp"), ("waits", ".google.protobuf.Duration")], start=1
    ):
        message.field.add(
            name=name, number=number, type_name=type_name,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
        )  # fmt: skip
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("validation_test.Times"))


def test_repeated_times_themselves_are_each_checked():
    times = _type_with_repeated_times()()
    times.at.add(seconds=1)
    times.at.add(seconds=-1)
    times.waits.add(seconds=5)
    times.waits.add(seconds=10**11)
    assert _violations(times) == {
        "at[1]": "must be between 1970-01-01T00:00:00Z and 2999-12-31T23:59:59Z",
        "waits[1]": "must be at most 100 years",
    }


def test_strings_over_the_limit_keep_their_reason():
    with pytest.raises(InvalidArgument) as info:
        check_request(ceremony_pb2.CreateCeremonyRequest(title="x" * 101), 100)
    assert info.value.reason == "STRING_TOO_LONG"
    assert [v.field for v in info.value.violations] == ["title"]


def test_timestamps_outside_the_supported_range_are_refused():
    far = ceremony_pb2.CreateCeremonyRequest(
        title="t", start_time=timestamp_pb2.Timestamp(seconds=MAX_TIMESTAMP_S + 1)
    )
    assert "start_time" in _violations(far)
    before_epoch = ceremony_pb2.CreateCeremonyRequest(title="t", end_time=timestamp_pb2.Timestamp(seconds=-1))
    assert "end_time" in _violations(before_epoch)
    bad_nanos = ceremony_pb2.CreateCeremonyRequest(
        title="t", start_time=timestamp_pb2.Timestamp(seconds=1, nanos=-5)
    )
    assert _violations(bad_nanos) == {"start_time": "nanos must be in [0, 999999999]"}
    check_request(
        ceremony_pb2.CreateCeremonyRequest(
            title="t", start_time=timestamp_pb2.Timestamp(seconds=MAX_TIMESTAMP_S)
        ),
        100,
    )


def test_durations_over_a_century_or_with_mixed_signs_are_refused():
    huge = ceremony_pb2.CreateCeremonyRequest(
        title="t",
        timeout=ceremony_pb2.TimeoutConfig(fixed_timeout=duration_pb2.Duration(seconds=10**11)),
    )
    assert _violations(huge) == {"timeout.fixed_timeout": "must be at most 100 years"}
    mixed = ceremony_pb2.CreateCeremonyRequest(
        title="t",
        timeout=ceremony_pb2.TimeoutConfig(fixed_timeout=duration_pb2.Duration(seconds=5, nanos=-1)),
    )
    assert "timeout.fixed_timeout" in _violations(mixed)


def test_nul_in_a_sign_up_is_invalid_argument_on_every_backend_and_creates_nobody(server):
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        server.sign_up,
        email="nul@example.com",
        display_name="Ada\x00Lovelace",
    )
    assert failure.reason == "INVALID_FIELD_VALUE"
    assert failure.violations == {"display_name": "must not contain a NUL character"}
    # Nothing was written: the same email signs up cleanly afterwards.
    reply = server.auth.SignUp(
        auth_pb2.SignUpRequest(email="nul@example.com", password="correct horse battery")
    )
    assert reply.user.email == "nul@example.com"


def test_out_of_range_times_reach_no_servicer(server):
    _, token = server.make_user("coordinator")
    stub = ceremony_pb2_grpc.CeremonyServiceStub(server.channel)
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.CreateCeremony,
        ceremony_pb2.CreateCeremonyRequest(
            title="Far future",
            prefix="far-future",
            start_time=timestamp_pb2.Timestamp(seconds=10**12),
            timeout=ceremony_pb2.TimeoutConfig(fixed_timeout=duration_pb2.Duration(seconds=-(10**11))),
        ),
        metadata=bearer(token),
    )
    assert set(failure.violations) == {"start_time", "timeout.fixed_timeout"}
    listed = stub.ListCeremonies(ceremony_pb2.ListCeremoniesRequest(), metadata=bearer(token))
    assert list(listed.ceremonies) == []
