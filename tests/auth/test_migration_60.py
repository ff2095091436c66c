"""Migration 60 on an install from before it: users gain the revocation epoch and change
time (existing users keep working), and the audit table appears."""

from __future__ import annotations

import pytest

from coordd.store.auth.models import AuditEvent, User
from coordd.store.migrations import migrate
from tests.support.migrations import install_store


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_migration_60_adds_epoch_change_time_and_audit_table(tmp_path, engine):
    with install_store(tmp_path, engine) as store:
        assert 60 not in migrate(store, up_to=59)
        db = store.db
        # What migration 1 created before migration 60 existed.
        db.execute_sql("DROP INDEX user_auth_change_time")
        for column in ("token_epoch", "auth_change_time"):
            db.execute_sql(f'ALTER TABLE "user" DROP COLUMN {column}')
        db.execute_sql(
            'INSERT INTO "user" (id, email, email_key, display_name, password_hash, roles, create_time, '
            "disabled) VALUES ('u1', 'old@example.com', 'old@example.com', 'old', '!', 'participant', 0, "
            f"{'false' if store.is_postgres else '0'})"
        )
        assert not db.table_exists("audit_event")

        assert migrate(store, up_to=60) == [60]
        columns = {c.name for c in db.get_columns("user")}
        assert {"token_epoch", "auth_change_time"} <= columns
        old = User.get_by_id("u1")
        assert old.token_epoch == 0 and old.auth_change_time is None
        assert db.table_exists("audit_event") and AuditEvent.select().count() == 0
        assert "user_auth_change_time" in {i.name for i in db.get_indexes("user")}
        assert migrate(store, up_to=60) == []
