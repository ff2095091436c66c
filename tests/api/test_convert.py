"""Conversions every servicer shares: instants to Timestamps, role sets to enum values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import timestamp_pb2

from coordd.api.convert import roles_to_proto, ts
from coordd_client.v1 import common_pb2


def _by_protobuf(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value.astimezone(UTC))
    return out


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 12, 4, 1, 2, 3, 456789, tzinfo=UTC),
        datetime(2026, 12, 4, 1, 2, 3, 456789, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # before the epoch: nanos stay >= 0
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2020, 6, 1, 12, 0, 0),  # naive: local time, as astimezone reads it
    ],
)
def test_ts_gives_the_same_instant_as_protobufs_own_conversion(value):
    assert ts(value) == _by_protobuf(value)
    assert ts(value).ToDatetime(tzinfo=UTC) == value.astimezone(UTC)


def test_ts_of_no_time_is_no_timestamp():
    assert ts(None) is None


def test_roles_to_proto_is_sorted_and_a_fresh_list_for_every_caller():
    first = roles_to_proto(frozenset({"provider", "participant"}))
    assert first == sorted([common_pb2.ROLE_PARTICIPANT, common_pb2.ROLE_PROVIDER])
    first.append(common_pb2.ROLE_ADMIN)  # a caller changing its list changes no one else's
    assert roles_to_proto(["participant", "provider"]) == sorted(
        [common_pb2.ROLE_PARTICIPANT, common_pb2.ROLE_PROVIDER]
    )
    assert roles_to_proto([]) == []
