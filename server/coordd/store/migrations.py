"""Versioned schema migrations, applied by `coordd migrate` and on start.

A migration is appended to MIGRATIONS (each domain adds its own entry), never edited once
released. Each runs in its own transaction;
on PostgreSQL an advisory lock keeps two replicas from migrating at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import peewee
import structlog

from coordd.store import models as m
from coordd.store import scheduler_lease
from coordd.store.auth import models as auth_m
from coordd.store.auth import siwe as auth_siwe
from coordd.store.ceremony import models as ceremony_m
from coordd.store.competition import models as competition_m
from coordd.store.db import Store
from coordd.store.jobs import models as job_m
from coordd.store.ledger import models as ledger_m
from coordd.store.node import members as node_members
from coordd.store.node import models as node_m
from coordd.store.notify import models as notify_m

log = structlog.get_logger(__name__)

_MIGRATION_LOCK = 0x636F6F7264646D  # "coorddm"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[peewee.Database], None]


def _create(*models: type[peewee.Model]) -> Callable[[peewee.Database], None]:
    def apply(db: peewee.Database) -> None:
        db.create_tables(list(models), safe=False)

    return apply


MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "platform: users, api keys, idempotency, events, scheduler",
        _create(
            auth_m.User, auth_m.ApiKey, m.IdempotencyRecord, m.EventLog, m.SchedulerLeader, m.SchedulerTaskRun
        ),
    ),
    Migration(
        10,
        "ledger: accounts, entries, postings",
        _create(ledger_m.LedgerAccount, ledger_m.LedgerEntry, ledger_m.LedgerPosting),
    ),
    Migration(11, "jobs: jobs, labels, attempts, attestations", job_m.create_tables),
    Migration(
        12, "jobs: partial indexes, failure-only attempt rows, signature on the job", job_m.lean_hot_path
    ),
    Migration(
        110,
        "jobs: pending jobs (schedule time, snooze, parents), dependencies, unique keys",
        job_m.add_pending,
    ),
    Migration(111, "jobs: concurrency caps per submitter, model and label", job_m.add_limits),
    Migration(113, "jobs: periodic schedules", job_m.add_schedules),
    Migration(
        112, "jobs: fair share across submitters (claim order priority, fair_seq, id)", job_m.add_fair_share
    ),
    Migration(
        210,
        "jobs: queue-time index for aging, pending-by-priority index for stats",
        job_m.add_queue_time_indexes,
    ),
    Migration(
        40,
        "competition: competitions, transitions, registrations, entries, results, notifications",
        _create(*competition_m.ALL_MODELS),
    ),
    Migration(
        20,
        "nodes: projects, nodes, workloads, assignments, transitions, incidents, maintenance, rewards",
        _create(
            node_m.Project,
            node_m.Node,
            node_m.NodeLabel,
            node_m.Workload,
            node_m.Assignment,
            node_m.Transition,
            node_m.Incident,
            node_m.MaintenanceWindow,
            node_m.RewardEntry,
        ),
    ),
    Migration(21, "notify: channels, deliveries (outbox)", _create(notify_m.Channel, notify_m.Delivery)),
    Migration(22, "notify: channel secrets sealed at rest (wider column)", notify_m.widen_secret),
    Migration(100, "notify: channel kinds, circuit breaker", notify_m.add_isolation),
    Migration(
        101, "nodes: transitions' effective time (outages start at the last beat)", node_m.add_honest_uptime
    ),
    Migration(102, "nodes: flapping, escalation, silences", node_m.add_monitoring),
    Migration(103, "notify: deliveries by dedup key (recovery follows the outage)", notify_m.index_dedup_key),
    Migration(
        30,
        "ceremony: ceremonies, circuits, participants, contributions, uploads",
        _create(
            ceremony_m.Ceremony,
            ceremony_m.Circuit,
            ceremony_m.Participant,
            ceremony_m.Contribution,
            ceremony_m.CeremonyUpload,
        ),
    ),
    Migration(
        90,
        "ceremony: named verifiers, transport retries, restart clock",
        ceremony_m.add_named_verifiers,
    ),
    Migration(92, "ceremony: eligibility rules", ceremony_m.add_eligibility),
    Migration(91, "auth: Sign-In with Ethereum nonces", auth_siwe.create_tables),
    Migration(60, "auth: revocation epoch, account changes, audit events", auth_m.add_account_control),
    Migration(
        70,
        "scheduler: a leadership lease (epoch, expiry, holder connection) and who ran each task last",
        scheduler_lease.add_lease_columns,
    ),
    Migration(80, "auth: API key scopes, the node of a node key", auth_m.add_key_scopes),
    Migration(
        81,
        "nodes: project members (joining needs consent), node keys linked to their node",
        node_members.add_members_and_node_links,
    ),
    Migration(200, "nodes: public status pages opted in per project", node_m.add_public_status),
    Migration(
        120,
        "competition: group registration (group, payer), check-in, teams",
        competition_m.add_groups_teams_checkin,
    ),
]
# Domains append in any order; migrations apply in version order, and a version is unique.
MIGRATIONS.sort(key=lambda item: item.version)
if len({item.version for item in MIGRATIONS}) != len(MIGRATIONS):
    raise RuntimeError("two migrations share a version number")


def applied_versions(store: Store) -> set[int]:
    if not store.db.table_exists(m.SchemaMigration._meta.table_name):
        return set()
    return {row.version for row in m.SchemaMigration.select(m.SchemaMigration.version)}


def migrate(store: Store, up_to: int | None = None) -> list[int]:
    """Applies every pending migration (through version `up_to`, if given); returns the
    versions applied now."""
    db = store.db
    with store.write():
        if store.is_postgres:
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        db.create_tables([m.SchemaMigration], safe=True)
    applied: list[int] = []
    for migration in MIGRATIONS:
        if up_to is not None and migration.version > up_to:
            break
        with store.write() as tx:
            if store.is_postgres:
                db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            if m.SchemaMigration.get_or_none(m.SchemaMigration.version == migration.version):
                continue
            migration.apply(db)
            m.SchemaMigration.create(version=migration.version, name=migration.name, applied_time=tx.now)
            applied.append(migration.version)
            log.info("migration applied", version=migration.version, migration=migration.name)
    return applied
