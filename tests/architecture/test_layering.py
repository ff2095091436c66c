"""The layout of docs/architecture.md holds: layers import only downwards, the domain builds no
SQL, no import cycles, and every module can be read in one sitting."""

from __future__ import annotations

from tests.architecture.layering import MAX_LINES, violations


def _of(rule: str) -> list[str]:
    return [str(v) for v in violations() if v.rule == rule]


def test_no_layer_imports_a_layer_above_it():
    assert _of("imports upwards") == []


def test_the_domain_imports_no_database_grpc_or_redis_library():
    assert _of("domain imports an adapter") == []


def test_the_domain_builds_no_sql_and_calls_no_query_builder():
    assert _of("query in the domain") + _of("SQL text in the domain") == []


def test_there_is_no_import_cycle():
    assert _of("import cycle") == []


def test_no_module_is_longer_than_the_limit():
    assert _of("too long") == [], f"modules over {MAX_LINES} lines"
