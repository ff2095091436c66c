"""A batch of new jobs goes to PostgreSQL through COPY (store/jobs/inserts.py). Its text is
built from a row template (the columns that hold one value across the batch encoded once)
and the varying columns: it must be exactly what encoding every value of every row gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from coordd.store.jobs import inserts

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _value_by_value(datas: list[dict]) -> str:
    """Every value of every row through the one-value encoder, as before the template."""
    lines = []
    for data in datas:
        cells = []
        for name, convert, _ in inserts._COPY_COLUMNS:
            value = data.get(name)
            cells.append(inserts._copy_text(value if convert is None or value is None else convert(value)))
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


def _jobs(count: int, **varying) -> list[dict]:
    base = inserts.new_jobs_base(
        submitter="alice",
        kind="inference",
        model_ref="org/m%s 100%\\N\t\n",
        state="queued",
        priority=0,
        cancel_requested=False,
        progress=0.0,
        create_time=NOW,
        queue_time=NOW,
        input_data=b"\x00\t\\{}",
        input_uri="",
        input_digest="ab" * 32,
    )
    out = []
    for i in range(count):
        values = {name: pick(i) for name, pick in varying.items()}
        out.append(inserts.new_job(base, f"01jcopy{i:019d}", fair_seq=i + 1, **values).__data__)
    return out


def test_a_batch_whose_columns_hold_one_value_is_encoded_as_value_by_value():
    datas = _jobs(50)
    assert inserts.copy_text(datas) == _value_by_value(datas)


def test_varying_columns_with_escapes_percents_nulls_and_lists_are_encoded_as_value_by_value():
    datas = _jobs(
        40,
        model_ref=lambda i: ["a\\b", "tab\there", "100% %s %d", "plain", "line\nbreak\r"][i % 5],
        input_data=lambda i: bytes([i, 0, 9, 92]) if i % 3 else None,
        labels=lambda i: ["gpu", f"l{i % 2}"] if i % 2 else [],
        cancel_requested=lambda i: i % 2 == 0,
        progress=lambda i: i / 3,
        run_after=lambda i: NOW + timedelta(microseconds=i) if i % 4 else None,
        priority=lambda i: i % 10,
    )
    assert inserts.copy_text(datas) == _value_by_value(datas)


def test_a_single_job_and_a_model_without_every_field_are_encoded_as_value_by_value():
    [one] = _jobs(1)
    assert inserts.copy_text([one]) == _value_by_value([one])
    sparse = [{"id": f"01jsparse{i:017d}", "fair_seq": i, "labels": [], "parents": []} for i in range(3)]
    assert inserts.copy_text(sparse) == _value_by_value(sparse)
