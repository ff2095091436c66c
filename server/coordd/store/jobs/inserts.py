"""New job rows: the data of a batch's models (`new_jobs_base`, `new_job`), and their INSERT
(one statement whose text depends only on the batch size) or, for batches on PostgreSQL,
their COPY, whose text is built a column at a time (`copy_text`)."""

from __future__ import annotations

import io
import operator
from typing import Any

import peewee

from coordd.store.jobs import fair
from coordd.store.jobs.models import Job, JobLabel
from coordd.store.models import JSONField, TimestampField

_JOB_FIELDS = Job._meta.sorted_fields
_JOB_INSERT = f"INSERT INTO job ({', '.join(f.column_name for f in _JOB_FIELDS)}) VALUES "
# Only these fields' stored form differs from their Python value (the other columns are
# str, int, float, bool or None, which both drivers take as they are): converting only them
# took a 100-job batch's row building from ~48 to ~10 us per job.
_CONVERTED = (TimestampField, JSONField, peewee.BlobField)


def _empty_list_fast(convert: Any) -> Any:
    """A JSON field's db_value with the empty list (most jobs' labels and parents) as text."""
    return lambda value: "[]" if value == [] else convert(value)


_ROW_PLAN = tuple(
    (
        f.name,
        _empty_list_fast(f.db_value)
        if isinstance(f, JSONField)
        else (f.db_value if isinstance(f, _CONVERTED) else None),
    )
    for f in _JOB_FIELDS
)
# COPY takes payloads as the bytes themselves (db_value wraps them for the driver's SQL).
_COPY_PLAN = tuple(
    (name, None if isinstance(f, peewee.BlobField) else convert)
    for (name, convert), f in zip(_ROW_PLAN, _JOB_FIELDS, strict=True)
)
# Every field, so a new job's data holds every column (NULL where no default) and a batch's
# rows come out of it by one itemgetter each.
_STATIC_DEFAULTS = {f.name: None if callable(f.default) else f.default for f in _JOB_FIELDS}
# The model's called defaults (new_id, list, list): `new_job` sets each of them itself.
assert {f.name for f in _JOB_FIELDS if callable(f.default)} == {"id", "labels", "parents"}


def new_jobs_base(**values: Any) -> dict[str, Any]:
    """The values a batch of new job rows shares (`values` over the model's static defaults),
    for `new_job`: built once per batch instead of once per job."""
    data = dict(_STATIC_DEFAULTS)
    data.update(values)
    return data


def new_job(base: dict[str, Any], job_id: str, **values: Any) -> Job:
    """A Job model for a row about to be inserted: `values` over `base` (see
    `new_jobs_base`), fresh empty lists for labels and parents. Built straight into the
    model's data: peewee's constructor (a descriptor call and a dirty-set update per field)
    cost ~30 us per 40-field job."""
    data = base.copy()
    data["id"] = job_id
    data["labels"] = []
    data["parents"] = []
    data.update(values)
    job = Job.__new__(Job)
    job.__data__ = data
    job._dirty = set(data)
    job.__rel__ = {}
    return job


def _row_values(jobs: list[Job], plan: tuple[tuple[str, Any], ...] = _ROW_PLAN) -> list[object]:
    out: list[object] = []
    append = out.append
    for job in jobs:
        data = job.__data__
        for name, convert in plan:
            value = data.get(name)
            append(value if convert is None or value is None else convert(value))
    return out


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_JOB_COPY = f"COPY job ({', '.join(f.column_name for f in _JOB_FIELDS)}) FROM STDIN"


def _copy_text(value: object) -> str:
    """One value in COPY's text format."""
    if value is None:
        return "\\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\\\x" + bytes(value).hex()
    return str(value)


# Per column: its conversion, and whether its values may be encoded once per distinct value
# (not JSON lists, which are unhashable, nor payload bytes, which are rarely repeated).
_COPY_COLUMNS = tuple(
    (name, convert, not isinstance(f, JSONField | peewee.BlobField))
    for (name, convert), f in zip(_COPY_PLAN, _JOB_FIELDS, strict=True)
)
_COPY_NAMES = tuple(name for name, _, _ in _COPY_COLUMNS)
_row_of = operator.itemgetter(*_COPY_NAMES)


def _encode(value: Any, convert: Any) -> str:
    return _copy_text(value if convert is None or value is None else convert(value))


def _plain(text: str) -> bool:
    """Whether COPY's text format takes `text` as it is."""
    return not ("\\" in text or "\t" in text or "\n" in text or "\r" in text)


def _copy_column(values: tuple[Any, ...], convert: Any, memoize: bool) -> list[str] | tuple[Any, ...]:
    """One varying column of a batch in COPY's text format: text columns whose values need
    no escaping (ids) as they are, others each distinct value (of a column that allows it)
    converted and escaped once."""
    if convert is None:
        if all(type(v) is str for v in values) and _plain("".join(values)):
            return values
        if all(type(v) is int for v in values):
            return list(map(str, values))
    if not memoize:
        return [_encode(v, convert) for v in values]
    memo: dict[Any, str] = {}
    out = []
    for value in values:
        text = memo.get(value)
        if text is None:
            text = memo[value] = _encode(value, convert)
        out.append(text)
    return out


def copy_text(datas: list[dict[str, Any]]) -> str:
    """The rows of a batch in COPY's text format. Most columns of a batch hold one value
    (the transaction's time, zeros, defaults, empty lists): each such column is encoded once
    into a row template, and only the varying columns (ids, fair order, payloads...) are
    encoded per row and put into it by one `%` each. A 100-job batch: ~5.4 -> ~1.5 us a job
    (docs/PERFORMANCE.md)."""
    try:
        rows = [_row_of(data) for data in datas]
    except KeyError:  # a model not built by `new_job`: absent fields are NULL
        rows = [tuple(map(data.get, _COPY_NAMES)) for data in datas]
    count = len(rows)
    template: list[str] = []
    varying: list[Any] = []
    for column, (_, convert, memoize) in zip(zip(*rows, strict=True), _COPY_COLUMNS, strict=True):
        first = column[0]
        if column.count(first) == count:
            template.append(_encode(first, convert).replace("%", "%%"))
        else:
            template.append("%s")
            varying.append(_copy_column(column, convert, memoize))
    line = "\t".join(template)
    if not varying:
        return (line.replace("%%", "%") + "\n") * count
    return "\n".join([line % values for values in zip(*varying, strict=True)]) + "\n"


def _copy_jobs(db: peewee.Database, jobs: list[Job]) -> None:
    """PostgreSQL: the rows through COPY, which neither interpolates nor parses 40 literals
    per row (a 100-job batch: see docs/PERFORMANCE.md)."""
    text = copy_text([job.__data__ for job in jobs])
    # One read of the whole text: psycopg2 reads `size` characters at a time, taking the GIL
    # back for each read, and each wait for it holds the transaction open.
    db.cursor().copy_expert(_JOB_COPY, io.StringIO(text), size=max(8192, len(text)))


# Batches at least this large go through COPY on PostgreSQL (0: never).
COPY_FROM = 2


def insert_jobs(jobs: list[Job]) -> None:
    """New job rows in one INSERT whose text depends only on the batch size: peewee's
    insert_many spent ~0.5 ms building the SQL for one 40-column row, more than the rest of a
    submission. PostgreSQL, `COPY_FROM` rows or more: through COPY instead."""
    if not jobs:
        return
    db = Job._meta.database  # the store's database, inside the caller's transaction
    if 0 < COPY_FROM <= len(jobs) and not isinstance(getattr(db, "obj", db), peewee.SqliteDatabase):
        _copy_jobs(db, jobs)
        return
    p = db.param
    row = f"({', '.join([p] * len(_JOB_FIELDS))})"
    db.execute_sql(_JOB_INSERT + ", ".join([row] * len(jobs)), _row_values(jobs))


_FAIR_SEQ_AT = [f.name for f in _JOB_FIELDS].index("fair_seq")


def insert_job_in_fair_order(job: Job) -> None:
    """One new job row whose `fair_seq` the INSERT itself computes, one more than
    `fair.floor_for` (the submitter's latest and the head at its priority): the lookup and
    the insert in one round trip. The value is read back into `job`."""
    db = Job._meta.database
    p = db.param
    floor, floor_params = fair.floor_sql(job.submitter, job.priority)
    values = _row_values([job])
    marks = [p] * len(_JOB_FIELDS)
    marks[_FAIR_SEQ_AT] = f"{floor} + 1"
    params = [*values[:_FAIR_SEQ_AT], *floor_params, *values[_FAIR_SEQ_AT + 1 :]]
    row = db.execute_sql(f"{_JOB_INSERT}({', '.join(marks)}) RETURNING fair_seq", params).fetchone()
    job.fair_seq = int(row[0])


def insert_labels(rows: list[dict[str, str]]) -> None:
    """The `job_label` rows ({"job": id, "label": label}) of new jobs, in one INSERT."""
    JobLabel.insert_many(rows).execute()
