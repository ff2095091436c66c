"""Conversions between domain values and protobuf messages shared by every servicer."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from coordd.core.errors import FieldViolation, InvalidArgument
from coordd_client.v1 import common_pb2

_ROLE_PREFIX = "ROLE_"


def role_to_proto(role: str) -> int:
    return common_pb2.Role.Value(_ROLE_PREFIX + role.upper())


def roles_to_proto(roles: Iterable[str]) -> list[int]:
    return sorted(role_to_proto(r) for r in roles)


def roles_from_proto(values: Iterable[int], field: str = "roles") -> list[str]:
    out = []
    for index, value in enumerate(values):
        if value == common_pb2.ROLE_UNSPECIFIED or value not in common_pb2.Role.values():
            raise InvalidArgument(
                f"{field}[{index}] is not a valid role",
                violations=[FieldViolation(f"{field}[{index}]", "unknown or unspecified role")],
            )
        out.append(common_pb2.Role.Name(value)[len(_ROLE_PREFIX) :].lower())
    return out


def ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value.astimezone(UTC))
    return out


def from_ts(value: timestamp_pb2.Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def duration(seconds: float | timedelta | None) -> duration_pb2.Duration | None:
    if seconds is None:
        return None
    out = duration_pb2.Duration()
    out.FromTimedelta(seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds))
    return out


def parse_name(name: str, collection: str, field: str = "name") -> str:
    """`apiKeys/abc` -> `abc`; anything else is INVALID_ARGUMENT naming the field."""
    prefix = collection + "/"
    resource_id = name[len(prefix) :] if name.startswith(prefix) else ""
    if not resource_id or "/" in resource_id or len(resource_id) > 64:
        raise InvalidArgument(
            f"{field} must look like {collection}/{{id}}, got {name!r}",
            violations=[FieldViolation(field, f"expected {collection}/{{id}}")],
        )
    return resource_id
