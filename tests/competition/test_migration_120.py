"""Migration 120 on an install from before it: competitions and registrations gain the
group, payer, check-in and team columns, the team tables appear, and existing rows keep
working (an existing waitlist reads as single entries)."""

from __future__ import annotations

import pytest

from coordd.store.competition.models import _NEW_COLUMNS, Team, TeamMember
from coordd.store.migrations import migrate
from tests.support.migrations import install_store


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_migration_120_adds_groups_payers_check_in_and_teams(tmp_path, engine):
    with install_store(tmp_path, engine) as store:
        migrate(store, up_to=119)
        db = store.db
        # What migration 40 created before migration 120 existed.
        for table, columns in _NEW_COLUMNS.items():
            for column, _ in columns:
                if column == "payer_id" and not store.is_postgres:
                    continue  # SQLite cannot drop a foreign key column (the kept one is skipped)
                db.execute_sql(f'ALTER TABLE "{table}" DROP COLUMN {column}')
        assert migrate(store, up_to=120) == [120]
        for table, columns in _NEW_COLUMNS.items():
            present = {c.name for c in db.get_columns(table)}
            assert {c for c, _ in columns} <= present
        assert db.table_exists(Team._meta.table_name) and db.table_exists(TeamMember._meta.table_name)
        assert "registration_group" in {i.name for i in db.get_indexes("registration")}
        assert migrate(store, up_to=120) == []
