"""Tables of the node domain: projects, nodes, workloads, assignments, transitions,
incidents, maintenance windows and the rewards ledger.

Table names carry a `node_` prefix so they never collide with another domain's.
Due-time columns (`deadline_time`, `next_action_time`, `reward_due_time`) are indexed and
NULL when nothing is due, so the scheduler's selects cost what is due, not the table size.
"""

from __future__ import annotations

import peewee

from coordd.store.auth.models import ApiKey, User
from coordd.store.models import BaseModel, IdModel, JSONField, TimestampField

# Statuses as stored (the proto enum names without the HEALTH_STATUS_ prefix, lower case).
UNKNOWN = "unknown"
PENDING = "pending"
UP = "up"
DOWN = "down"
MAINTENANCE = "maintenance"
DECOMMISSIONED = "decommissioned"
STATUSES = (UNKNOWN, PENDING, UP, DOWN, MAINTENANCE, DECOMMISSIONED)

# Replica states reported by nodes.
ASSIGNED = "assigned"
STARTING = "starting"
RUNNING = "running"
FAILED = "failed"
REPLICA_STATES = (ASSIGNED, STARTING, RUNNING, FAILED)

# Maintenance window states.
SCHEDULED = "scheduled"
ACTIVE = "active"
ENDED = "ended"


def window_of(interval_s: float, misses: int, grace_s: float) -> float:
    """Silence longer than this makes a node DOWN: interval x misses + grace."""
    return interval_s * misses + grace_s


class Project(IdModel):
    owner = peewee.ForeignKeyField(User, backref="node_projects", on_delete="CASCADE")
    display_name = peewee.CharField(max_length=100)
    slug = peewee.CharField(max_length=63, unique=True)
    heartbeat_interval_s = peewee.FloatField()
    misses = peewee.IntegerField()
    grace_s = peewee.FloatField()
    successes_before_up = peewee.IntegerField()
    mass_outage_share = peewee.FloatField()
    mass_outage_min_nodes = peewee.IntegerField()
    points_per_up_hour = peewee.BigIntegerField()
    reward_cap_per_day = peewee.BigIntegerField()
    create_time = TimestampField()
    update_time = TimestampField()
    # The owner's opt-in to a public status page (migration 200).
    public_status = peewee.BooleanField(default=False, constraints=[peewee.SQL("DEFAULT FALSE")])

    class Meta:
        table_name = "node_projects"

    @property
    def window_s(self) -> float:
        return window_of(self.heartbeat_interval_s, self.misses, self.grace_s)


class Node(IdModel):
    project = peewee.ForeignKeyField(Project, backref="nodes", on_delete="CASCADE")
    owner = peewee.ForeignKeyField(User, backref="nodes", on_delete="CASCADE")
    display_name = peewee.CharField(max_length=100)
    region = peewee.CharField(max_length=64, default="")
    cpu_cores = peewee.IntegerField(default=0)
    memory_mb = peewee.BigIntegerField(default=0)
    disk_gb = peewee.BigIntegerField(default=0)
    gpus = JSONField(default=list)  # [{"model": str, "count": int}]
    labels = JSONField(default=dict)
    status = peewee.CharField(max_length=16, default=UNKNOWN)
    status_reason = peewee.CharField(max_length=500, default="")
    status_time = TimestampField()
    # DOWN that started inside a mass outage: not an incident, not an uptime debit.
    suppressed = peewee.BooleanField(default=False)
    last_seen_time = TimestampField(null=True)
    # When the node is DOWN unless it beats again; NULL when it cannot go DOWN.
    deadline_time = TimestampField(null=True, index=True)
    api_key = peewee.ForeignKeyField(ApiKey, null=True, unique=True, on_delete="SET NULL")
    # Start of the next hour bucket to credit, and when it closes.
    reward_cursor = TimestampField()
    reward_due_time = TimestampField(null=True, index=True)
    create_time = TimestampField()
    update_time = TimestampField()
    # -- monitoring (migration 102) --
    # Set while the node is FLAPPING (too many changes in the project's flap window).
    flapping_since = TimestampField(null=True, index=True)

    class Meta:
        table_name = "nodes"
        indexes = ((("project", "status"), False), (("owner", "id"), False))


class NodeLabel(BaseModel):
    """One row per label, so ListNodes filters by label through an index on both databases."""

    node = peewee.ForeignKeyField(Node, backref="label_rows", on_delete="CASCADE")
    key = peewee.CharField(max_length=63)
    value = peewee.CharField(max_length=255)

    class Meta:
        table_name = "node_labels"
        primary_key = peewee.CompositeKey("node", "key")
        indexes = ((("key", "value"), False),)


class Workload(IdModel):
    project = peewee.ForeignKeyField(Project, backref="workloads", on_delete="CASCADE")
    display_name = peewee.CharField(max_length=100)
    spec = peewee.TextField()
    replicas = peewee.IntegerField()
    cpu_millis = peewee.IntegerField(default=0)
    memory_mb = peewee.BigIntegerField(default=0)
    disk_gb = peewee.BigIntegerField(default=0)
    gpu_count = peewee.IntegerField(default=0)
    gpu_model = peewee.CharField(max_length=100, default="")
    placement_labels = JSONField(default=dict)
    status = peewee.CharField(max_length=16, default=PENDING)
    status_reason = peewee.CharField(max_length=500, default="")
    status_time = TimestampField()
    create_time = TimestampField()
    update_time = TimestampField()

    class Meta:
        table_name = "node_workloads"


class Assignment(IdModel):
    workload = peewee.ForeignKeyField(Workload, backref="assignments", on_delete="CASCADE")
    node = peewee.ForeignKeyField(Node, backref="assignments", on_delete="CASCADE")
    state = peewee.CharField(max_length=16, default=ASSIGNED)
    message = peewee.CharField(max_length=500, default="")
    create_time = TimestampField()
    update_time = TimestampField()

    class Meta:
        table_name = "node_assignments"
        # At most one replica of a workload per node (spread).
        indexes = ((("workload", "node"), True), (("node", "id"), False))


class Transition(BaseModel):
    id = peewee.BigAutoField()
    kind = peewee.CharField(max_length=16)  # node | workload
    subject_id = peewee.CharField(max_length=26)
    project_id = peewee.CharField(max_length=26)
    from_status = peewee.CharField(max_length=16)
    to_status = peewee.CharField(max_length=16)
    reason = peewee.CharField(max_length=500)
    time = TimestampField()
    # The time after this transition is not counted against uptime (mass outage).
    excluded = peewee.BooleanField(default=False)
    # Since migration 101: when the state really began, if before `time` (when it was
    # detected): a DOWN began at the last heartbeat that arrived.
    effective_time = TimestampField(null=True)

    class Meta:
        table_name = "node_transitions"
        indexes = ((("subject_id", "time"), False), (("project_id", "id"), False))


class Incident(IdModel):
    kind = peewee.CharField(max_length=16)  # node | workload | project
    subject_id = peewee.CharField(max_length=26)
    project_id = peewee.CharField(max_length=26)
    start_time = TimestampField()
    end_time = TimestampField(null=True)
    cause = peewee.CharField(max_length=500)
    inhibited = peewee.BooleanField(default=False)
    resolution = peewee.CharField(max_length=100, default="")
    # -- monitoring (migration 102) --
    # When the opening was notified; `held_since`: held back (a silence, flapping) since
    # then, and not notified yet (its recovery then is not notified either).
    notified_time = TimestampField(null=True)
    held_since = TimestampField(null=True)
    acknowledged_time = TimestampField(null=True)
    acknowledged_by = peewee.CharField(max_length=26, default="")
    escalated_time = TimestampField(null=True)
    reminders = peewee.IntegerField(default=0)
    # When escalation or the next reminder is due; NULL: nothing due (closed, acknowledged).
    next_notify_time = TimestampField(null=True, index=True)

    class Meta:
        table_name = "node_incidents"
        indexes = ((("subject_id", "end_time"), False),)


class MaintenanceWindow(IdModel):
    project = peewee.ForeignKeyField(Project, backref="maintenance_windows", on_delete="CASCADE")
    # NULL: the whole project.
    node = peewee.ForeignKeyField(Node, null=True, backref="maintenance_windows", on_delete="CASCADE")
    created_by = peewee.ForeignKeyField(User, on_delete="CASCADE")
    start_time = TimestampField()
    end_time = TimestampField()
    reason = peewee.CharField(max_length=500, default="")
    state = peewee.CharField(max_length=16)  # scheduled | active | ended
    next_action_time = TimestampField(null=True, index=True)
    create_time = TimestampField()

    class Meta:
        table_name = "node_maintenance_windows"
        indexes = ((("project", "end_time"), False),)


class RewardEntry(BaseModel):
    id = peewee.BigAutoField()
    owner = peewee.ForeignKeyField(User, backref="reward_entries", on_delete="CASCADE")
    project_id = peewee.CharField(max_length=26)
    node_id = peewee.CharField(max_length=26)
    # `{node}:{bucket start}`: a bucket is credited at most once, whatever the scheduler does.
    bucket_key = peewee.CharField(max_length=80, unique=True)
    bucket_start = TimestampField()
    bucket_end = TimestampField()
    # UTC day of the bucket, for the per-day cap.
    day = peewee.CharField(max_length=10)
    up_seconds = peewee.FloatField()
    points = peewee.BigIntegerField()
    capped = peewee.BooleanField(default=False)
    create_time = TimestampField()

    class Meta:
        table_name = "node_reward_entries"
        indexes = ((("owner", "project_id", "day"), False),)


def add_honest_uptime(db: peewee.Database) -> None:
    """Migration 101: when a transition's state really began (a DOWN: at the last beat)."""
    columns = {c.name for c in db.get_columns("node_transitions")}
    if "effective_time" not in columns:
        db.execute_sql("ALTER TABLE node_transitions ADD COLUMN effective_time BIGINT")


def add_public_status(db: peewee.Database) -> None:
    """Migration 200: a project's public status page is its owner's opt-in (off for all)."""
    columns = {c.name for c in db.get_columns("node_projects")}
    if "public_status" not in columns:
        db.execute_sql("ALTER TABLE node_projects ADD COLUMN public_status BOOLEAN NOT NULL DEFAULT FALSE")


# -- monitoring (issue 14) ------------------------------------------------------------------


class MonitoringPolicy(BaseModel):
    """A project's flapping, escalation and repeat policy; no row: the defaults."""

    project = peewee.ForeignKeyField(Project, primary_key=True, on_delete="CASCADE")
    flap_changes = peewee.IntegerField()
    flap_window_s = peewee.FloatField()
    flap_settle_s = peewee.FloatField()
    escalate_after_s = peewee.FloatField()
    escalation_channel_id = peewee.CharField(max_length=26, default="")
    repeat_every_s = peewee.FloatField()
    update_time = TimestampField()

    class Meta:
        table_name = "node_monitoring_policies"


class Silence(IdModel):
    """Notifications about matching nodes are held back from start to end; states,
    incidents and uptime stay true. Matches the whole project, one node, or a label."""

    project = peewee.ForeignKeyField(Project, backref="silences", on_delete="CASCADE")
    node_id = peewee.CharField(max_length=26, default="")
    label_key = peewee.CharField(max_length=63, default="")
    label_value = peewee.CharField(max_length=255, default="")
    start_time = TimestampField()
    end_time = TimestampField()
    reason = peewee.CharField(max_length=500)
    created_by = peewee.ForeignKeyField(User, on_delete="CASCADE")
    create_time = TimestampField()
    # Set once its end was handled (held-back DOWN notified): NULL while it may still matter.
    ended_time = TimestampField(null=True)
    next_action_time = TimestampField(null=True, index=True)

    class Meta:
        table_name = "node_silences"
        indexes = ((("project", "end_time"), False),)


def add_monitoring(db: peewee.Database) -> None:
    """Migration 102: flapping, escalation and silences."""
    columns = {c.name for c in db.get_columns("nodes")}
    if "flapping_since" not in columns:
        db.execute_sql("ALTER TABLE nodes ADD COLUMN flapping_since BIGINT")
    db.execute_sql("CREATE INDEX IF NOT EXISTS nodes_flapping_since ON nodes (flapping_since)")
    columns = {c.name for c in db.get_columns("node_incidents")}
    added = {
        "notified_time": "BIGINT",
        "held_since": "BIGINT",
        "acknowledged_time": "BIGINT",
        "acknowledged_by": "VARCHAR(26) NOT NULL DEFAULT ''",
        "escalated_time": "BIGINT",
        "reminders": "INTEGER NOT NULL DEFAULT 0",
        "next_notify_time": "BIGINT",
    }
    for name, ddl in added.items():
        if name not in columns:
            db.execute_sql(f"ALTER TABLE node_incidents ADD COLUMN {name} {ddl}")
    db.execute_sql(
        "CREATE INDEX IF NOT EXISTS node_incidents_next_notify_time ON node_incidents (next_notify_time)"
    )
    db.create_tables([MonitoringPolicy, Silence], safe=True)
