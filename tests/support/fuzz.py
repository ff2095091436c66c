"""Hypothesis strategies for any protobuf request, built from its descriptor.

Values lean towards what breaks servers: empty and huge strings, NUL and other control
characters, unicode, resource names that look almost right, integer extremes, unknown enum
numbers, Timestamps and Durations at and past their limits, deep and repeated messages.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message
from hypothesis import strategies as st

F = descriptor.FieldDescriptor
COLLECTIONS = (
    "ceremonies",
    "circuits",
    "participants",
    "contributions",
    "competitions",
    "registrations",
    "jobs",
    "projects",
    "nodes",
    "workloads",
    "channels",
    "users",
    "apiKeys",
)
_INT_LIMITS = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}


def _ints(kind: int) -> st.SearchStrategy[int]:
    low, high = _INT_LIMITS[kind]
    edges = [v for v in (low, high, -1, 0, 1, 2, 100, 1001, 10**6, 2**31, 2**53) if low <= v <= high]
    return st.one_of(
        st.sampled_from(edges), st.integers(low, high), st.integers(max(low, -5), min(high, 5000))
    )


# Names of resources that exist on the fuzzed server (filled by the test before it fuzzes), so
# requests get past name parsing into the rules, not only INVALID_ARGUMENT / NOT_FOUND.
KNOWN_NAMES: list[str] = []


def strings() -> st.SearchStrategy[str]:
    known = st.deferred(lambda: st.sampled_from(KNOWN_NAMES) if KNOWN_NAMES else st.just(""))
    names = st.builds(
        lambda c, i: f"{c}/{i}",
        st.sampled_from(COLLECTIONS),
        st.one_of(st.text("0123456789abcdefghjkmnpqrstvwxyz", min_size=0, max_size=30), st.text(max_size=8)),
    )
    return st.one_of(
        known,
        known,
        st.just(""),
        st.text(max_size=20),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
        st.sampled_from(["\x00", "a\x00b", "\u202e", "../../etc/passwd", "' OR 1=1 --", "%s%n", "\ud7ff"]),
        names,
        st.builds(lambda n: "x" * n, st.sampled_from([255, 256, 4096, 20000])),
        st.sampled_from(["a@b.co", "user@example.com", "https://example.com/hook", "*", "-1"]),
    )


def _time(name: str) -> st.SearchStrategy[dict[str, int]]:
    seconds = st.one_of(
        st.sampled_from([0, 1, -1, 253402300799, 253402300800, -62135596800, 10**12, 315576000000]),
        st.integers(-(2**40), 2**40),
        st.integers(1_700_000_000, 1_900_000_000),
    )
    nanos = st.one_of(st.just(0), st.integers(-(10**9), 10**9), st.sampled_from([999_999_999, -1]))
    return st.fixed_dictionaries({"seconds": seconds, "nanos": nanos})


@cache
def request_strategy(desc: descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(desc)
    if desc.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        return _time(desc.full_name).map(lambda d: cls(**d))
    if desc.full_name == "google.protobuf.FieldMask":
        return st.lists(
            st.one_of(strings(), st.sampled_from(["title", "name", "labels", "*"])), max_size=3
        ).map(lambda paths: cls(paths=paths))
    if depth > 3:
        return st.just(cls())
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in desc.fields:
        value = _field_value(field, depth)
        if value is not None:
            fields[field.name] = value
    return st.fixed_dictionaries({}, optional=fields).map(lambda kwargs: _build(cls, desc, kwargs))


def _build(cls: type[Message], desc: descriptor.Descriptor, kwargs: dict[str, Any]) -> Message:
    message = cls()
    for name, value in kwargs.items():
        field = desc.fields_by_name[name]
        if field.containing_oneof is not None and message.WhichOneof(field.containing_oneof.name):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            getattr(message, name).update(value) if _is_scalar_map(field) else _fill_map(message, name, value)
        elif field.is_repeated:
            getattr(message, name).extend(value)
        elif field.type == F.TYPE_MESSAGE:
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def _is_scalar_map(field: descriptor.FieldDescriptor) -> bool:
    return field.message_type.fields_by_name["value"].type != F.TYPE_MESSAGE


def _fill_map(message: Message, name: str, value: dict[Any, Message]) -> None:
    target = getattr(message, name)
    for k, v in value.items():
        target[k].CopyFrom(v)


def _scalar(field: descriptor.FieldDescriptor) -> st.SearchStrategy[Any] | None:
    kind = field.type
    if kind == F.TYPE_STRING:
        return strings()
    if kind == F.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.just(b"\x00" * 64))
    if kind == F.TYPE_BOOL:
        return st.booleans()
    if kind in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return st.one_of(
            st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.5, -1.0])
        )
    if kind == F.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.sampled_from([-1, 99, 2**31 - 1]))
    if kind in _INT_LIMITS:
        return _ints(kind)
    return None


def _field_value(field: descriptor.FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key = _scalar(field.message_type.fields_by_name["key"])
        value_field = field.message_type.fields_by_name["value"]
        value = (
            request_strategy(value_field.message_type, depth + 1)
            if value_field.type == F.TYPE_MESSAGE
            else _scalar(value_field)
        )
        if key is None or value is None:
            return None
        return st.dictionaries(key, value, max_size=3)
    one = request_strategy(field.message_type, depth + 1) if field.type == F.TYPE_MESSAGE else _scalar(field)
    if one is None:
        return None
    if field.is_repeated:
        return st.lists(one, max_size=3 if field.type == F.TYPE_MESSAGE else 5)
    return one
