"""Checks every request gets before a servicer sees it, generated from the message descriptors.

- strings: at most `limit` characters, and no NUL character (PostgreSQL cannot store one in
  text, SQLite could: both backends now refuse it the same way, with the field named);
- `google.protobuf.Timestamp`: inside 1970-01-01 .. 2999-12-31 with valid nanos, so no
  conversion or date arithmetic downstream overflows;
- `google.protobuf.Duration`: at most 100 years either way, valid nanos.

The walk is skipped where it cannot find anything: a message whose encoded size is within the
string limit and carries no NUL byte on the wire has neither a long string nor a NUL in a string
(varints of non-zero values never contain a zero byte), and message types without a Timestamp or
Duration anywhere below them are known from their descriptor.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from google.protobuf import descriptor
from google.protobuf.message import Message

from coordd.core.errors import FieldViolation, InvalidArgument

_STRING = descriptor.FieldDescriptor.TYPE_STRING
_MESSAGE = descriptor.FieldDescriptor.TYPE_MESSAGE
TIMESTAMP = "google.protobuf.Timestamp"
DURATION = "google.protobuf.Duration"
MIN_TIMESTAMP_S = 0  # 1970-01-01T00:00:00Z
MAX_TIMESTAMP_S = 32_503_680_000 - 1  # 2999-12-31T23:59:59Z
MAX_DURATION_S = 100 * 366 * 86_400
_MAX_PATHS = 20


def _reaches(desc: descriptor.Descriptor, found: Callable[[descriptor.Descriptor], bool]) -> bool:
    """Whether a message type for which `found` holds can appear anywhere in messages of this
    type, itself included (map entries are message types, so their keys and values count)."""
    seen: set[str] = set()

    def walk(d: descriptor.Descriptor) -> bool:
        if found(d):
            return True
        if d.full_name in seen:
            return False
        seen.add(d.full_name)
        return any(f.type == _MESSAGE and walk(f.message_type) for f in d.fields)

    return walk(desc)


@cache
def _has_time(desc: descriptor.Descriptor) -> bool:
    """Whether a Timestamp or Duration can appear anywhere in messages of this type."""
    return _reaches(desc, lambda d: d.full_name in (TIMESTAMP, DURATION))


@cache
def _has_string(desc: descriptor.Descriptor) -> bool:
    """Whether a string field can appear anywhere in messages of this type."""
    return _reaches(desc, lambda d: any(f.type == _STRING for f in d.fields))


@cache
def _timed_fields(desc: descriptor.Descriptor) -> tuple[descriptor.FieldDescriptor, ...]:
    """The fields of this message type in which a Timestamp or Duration can appear."""
    return tuple(f for f in desc.fields if f.type == _MESSAGE and _has_time(f.message_type))


def _time_problem(message: Message, name: str) -> str:
    seconds, nanos = message.seconds, message.nanos  # type: ignore[attr-defined]
    if name == TIMESTAMP:
        if not 0 <= nanos < 1_000_000_000:
            return "nanos must be in [0, 999999999]"
        if not MIN_TIMESTAMP_S <= seconds <= MAX_TIMESTAMP_S:
            return "must be between 1970-01-01T00:00:00Z and 2999-12-31T23:59:59Z"
        return ""
    if abs(nanos) >= 1_000_000_000 or (seconds and nanos and (seconds > 0) != (nanos > 0)):
        return "nanos must be in (-1e9, 1e9) with the sign of seconds"
    if abs(seconds) > MAX_DURATION_S:
        return "must be at most 100 years"
    return ""


class _Walk:
    def __init__(self, limit: int, times: bool) -> None:
        self.limit = limit
        self.times = times
        self.violations: list[FieldViolation] = []

    def string(self, path: str, value: str) -> None:
        if len(value) > self.limit:
            self.violations.append(FieldViolation(path, f"at most {self.limit} characters"))
        elif "\x00" in value:
            self.violations.append(FieldViolation(path, "must not contain a NUL character"))

    def _strings_in(self, message: Message) -> bool:
        """Whether `message` can hold a string to check (see the module: its size and bytes)."""
        return message.ByteSize() > self.limit or b"\x00" in message.SerializeToString()

    @staticmethod
    def _timed_present(message: Message) -> list[tuple[descriptor.FieldDescriptor, Any]]:
        """The fields set in `message` that can hold a time: only those need a look when
        strings need none (most items of a batch: a few presence checks instead of
        listing every field)."""
        present = []
        for field in _timed_fields(message.DESCRIPTOR):
            if field.is_repeated:
                value = getattr(message, field.name)
                if value:
                    present.append((field, value))
            elif message.HasField(field.name):
                present.append((field, getattr(message, field.name)))
        return present

    def message(
        self, message: Message, prefix: str, strings: bool, timed: list[tuple[Any, Any]] | None = None
    ) -> None:
        """Checks `message`'s strings (if `strings`) and times; `timed`: its `_timed_present`
        fields, when the caller has them already."""
        desc = message.DESCRIPTOR
        if desc.full_name in (TIMESTAMP, DURATION):
            if self.times:
                problem = _time_problem(message, desc.full_name)
                if problem:
                    self.violations.append(FieldViolation(prefix.rstrip("."), problem))
            return
        times = self.times and _has_time(desc)
        if not (strings or times):
            return
        if not strings and timed is None:
            timed = self._timed_present(message)
        for field, value in message.ListFields() if strings else timed or ():
            if len(self.violations) >= _MAX_PATHS:
                return
            path = f"{prefix}{field.name}"
            if field.type == _STRING:
                if strings:
                    if field.is_repeated:
                        for i, v in enumerate(value):
                            self.string(f"{path}[{i}]", v)
                    else:
                        self.string(path, value)
            elif field.type != _MESSAGE:
                continue
            elif field.message_type.GetOptions().map_entry:
                for k, v in value.items():
                    if isinstance(k, str) and strings:
                        self.string(f"{path}[key]", k)
                    if isinstance(v, str) and strings:
                        self.string(f"{path}[{str(k)[:32]}]", v)
                    elif isinstance(v, Message):
                        self.message(v, f"{path}[{str(k)[:32]}].", strings)
            elif field.is_repeated:
                # The items of a large request are mostly small: each is checked for strings
                # only if it can hold one to refuse, as the whole request was.
                item_type = field.message_type
                times_itself = self.times and item_type.full_name in (TIMESTAMP, DURATION)
                times_inside = self.times and _has_time(item_type)
                for i, v in enumerate(value):
                    if (strings and self._strings_in(v)) or times_itself:
                        self.message(v, f"{path}[{i}].", strings)
                    elif times_inside and (present := self._timed_present(v)):
                        self.message(v, f"{path}[{i}].", False, present)
            else:
                self.message(value, path + ".", strings)


def check_request(request: Message, limit: int) -> None:
    """Raises InvalidArgument naming every offending field (at most 20)."""
    desc = request.DESCRIPTOR
    times = _has_time(desc)
    if not times and not _has_string(desc):
        return  # nothing in this type can be refused (WhoAmI's request, say)
    strings = request.ByteSize() > limit or b"\x00" in request.SerializeToString()
    if not (strings or times):
        return
    walk = _Walk(limit, times)
    walk.message(request, "", strings)
    if not walk.violations:
        return
    long = [
        v for v in walk.violations if v.description.startswith("at most") and "characters" in v.description
    ]
    reason = "STRING_TOO_LONG" if len(long) == len(walk.violations) else "INVALID_FIELD_VALUE"
    paths = ", ".join(v.field for v in walk.violations)
    if reason == "STRING_TOO_LONG":
        message = f"strings longer than {limit} characters: {paths}"
    else:
        message = f"invalid field values: {paths}"
    raise InvalidArgument(message, reason=reason, violations=walk.violations)
