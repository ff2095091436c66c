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


# A few role sets are converted on nearly every call (each reply that shows a user or key).
_ROLE_LISTS: dict[frozenset[str], tuple[int, ...]] = {}


def roles_to_proto(roles: Iterable[str]) -> list[int]:
    key = roles if isinstance(roles, frozenset) else frozenset(roles)
    found = _ROLE_LISTS.get(key)
    if found is None:
        found = tuple(sorted(role_to_proto(r) for r in key))
        if len(_ROLE_LISTS) < 256:  # every subset of the roles, with room to spare
            _ROLE_LISTS[key] = found
    return list(found)


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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """The instant as a Timestamp (a naive datetime is local time, as `astimezone` reads it).
    Built from the difference to the epoch: protobuf's `FromDatetime` is Python code that
    cost ~2 us a call, and replies carry several times."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.astimezone(UTC)
    delta = value - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000
    )


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
