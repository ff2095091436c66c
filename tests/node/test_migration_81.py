"""Migrations 80 and 81 on an install from before them: API keys gain scopes and the node
link, existing node keys are linked to their node (and stay heartbeat-only), and an operator
who already has a node in someone else's project becomes an active member of it."""

from __future__ import annotations

import pytest

from coordd.store.auth.models import ApiKey
from coordd.store.migrations import migrate
from coordd.store.node.members import ACTIVE, ProjectMember
from tests.support.migrations import install_store


def _insert(db, table: str, **values) -> None:  # type: ignore[no-untyped-def]
    columns = ", ".join(values)
    marks = ", ".join([db.param] * len(values))
    db.execute_sql(f'INSERT INTO "{table}" ({columns}) VALUES ({marks})', tuple(values.values()))


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_migrations_80_81_link_node_keys_and_keep_existing_operators_as_members(tmp_path, engine):
    with install_store(tmp_path, engine) as store:
        assert 80 not in migrate(store, up_to=79)
        db = store.db
        # What migration 1 created before migration 80 existed.
        db.execute_sql("DROP INDEX api_key_node_id")
        for column in ("scopes", "node_id"):
            db.execute_sql(f"ALTER TABLE api_key DROP COLUMN {column}")
        false = False if store.is_postgres else 0
        for uid in ("owner", "guest"):
            _insert(
                db,
                "user",
                id=uid,
                email=f"{uid}@x.io",
                email_key=f"{uid}@x.io",
                display_name=uid,
                password_hash="!",
                roles="node_operator",
                create_time=0,
                disabled=false,
                token_epoch=0,
            )
        for kid, uid in (("k-own", "owner"), ("k-guest", "guest"), ("k-plain", "guest")):
            _insert(
                db,
                "api_key",
                id=kid,
                user_id=uid,
                display_name=kid,
                prefix="ck_x",
                secret_hash=kid,
                roles="node_operator",
                create_time=0,
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
        for nid, uid, kid in (("n-own", "owner", "k-own"), ("n-g1", "guest", "k-guest")):
            _insert(
                db,
                "nodes",
                id=nid,
                project_id="p1",
                owner_id=uid,
                display_name=nid,
                region="",
                cpu_cores=1,
                memory_mb=1,
                disk_gb=1,
                gpus="[]",
                labels="{}",
                status="up",
                status_reason="",
                status_time=0,
                suppressed=false,
                api_key_id=kid,
                reward_cursor=0,
                create_time=0,
                update_time=0,
            )
        assert not db.table_exists("node_project_members")

        assert migrate(store, up_to=81) == [80, 81]
        links = {k.id: (k.node_id, k.scopes) for k in ApiKey.select()}
        assert links == {"k-own": ("n-own", ""), "k-guest": ("n-g1", ""), "k-plain": (None, "")}
        members = [(m.project_id, m.user_id, m.state, m.inviter_id) for m in ProjectMember.select()]
        assert members == [("p1", "guest", ACTIVE, "owner")], "the owner is never a member row"
        assert "api_key_node_id" in {i.name for i in db.get_indexes("api_key")}
        assert migrate(store, up_to=81) == []
