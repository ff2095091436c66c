"""Migration 200 on an install from before it: projects gain `public_status`, off for every
existing project (a status page is the owner's opt-in, never switched on by an upgrade)."""

from __future__ import annotations

import pytest

from coordd.store.migrations import migrate
from coordd.store.node.models import Project
from tests.node.test_migration_81 import _insert
from tests.support.migrations import install_store


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_migration_200_adds_public_status_off_for_existing_projects(tmp_path, engine):
    with install_store(tmp_path, engine) as store:
        migrate(store, up_to=199)
        db = store.db
        db.execute_sql("ALTER TABLE node_projects DROP COLUMN public_status")  # as before 200
        false = False if store.is_postgres else 0
        _insert(
            db,
            "user",
            id="owner",
            email="o@x.io",
            email_key="o@x.io",
            display_name="o",
            password_hash="!",
            roles="node_operator",
            create_time=0,
            disabled=false,
            token_epoch=0,
        )
        _insert(
            db,
            "node_projects",
            id="p1",
            owner_id="owner",
            display_name="p",
            slug="p",
            heartbeat_interval_s=1.0,
            misses=2,
            grace_s=1.0,
            successes_before_up=2,
            mass_outage_share=0.5,
            mass_outage_min_nodes=3,
            points_per_up_hour=1,
            reward_cap_per_day=1,
            create_time=5,
            update_time=5,
        )
        assert 200 in migrate(store)
        assert Project.get_by_id("p1").public_status is False
        assert migrate(store) == []
