"""Competition tables: competitions with their seat counters and lifecycle, transitions,
registrations, entries, results, and the notifications given to registrants.

The seat counters live on the competition row so that registering is one conditional
UPDATE on it (the row lock serializes seat allocation on PostgreSQL; SQLite's single
writer does the same); the registrations table is the record the counters summarise.
"""

from __future__ import annotations

import peewee

from coordd.store.auth.models import User
from coordd.store.models import BaseModel, IdModel, JSONField, TimestampField

# The values of `Competition.state` (the proto enum names without their prefix).
DRAFT = "DRAFT"
OPEN = "OPEN"
REGISTRATION_CLOSED = "REGISTRATION_CLOSED"
RUNNING = "RUNNING"
ENDED = "ENDED"
RESULTS_PUBLISHED = "RESULTS_PUBLISHED"
SETTLED = "SETTLED"
CANCELLED = "CANCELLED"
FAILED = "FAILED"
STATES = (DRAFT, OPEN, REGISTRATION_CLOSED, RUNNING, ENDED, RESULTS_PUBLISHED, SETTLED, CANCELLED, FAILED)

# The values of `Registration.state`.
CONFIRMED = "CONFIRMED"
WAITLISTED = "WAITLISTED"
OFFERED = "OFFERED"
REG_CANCELLED = "CANCELLED"
OFFER_EXPIRED = "OFFER_EXPIRED"
REGISTRATION_STATES = (CONFIRMED, WAITLISTED, OFFERED, REG_CANCELLED, OFFER_EXPIRED)

# The values of `CompetitionNotification.kind`: at most one of each per registration.
CONFIRMATION = "confirmation"
OFFER = "offer"
REMINDER = "reminder"
RESULTS = "results"
CANCELLATION = "cancellation"

# The values of `TeamMember.state`.
INVITED = "INVITED"
ACCEPTED = "ACCEPTED"


class Competition(IdModel):
    owner = peewee.ForeignKeyField(User, backref="competitions", on_delete="RESTRICT", index=True)
    title = peewee.CharField(max_length=200)
    description = peewee.TextField(default="")
    tags = JSONField(default=list)
    # ",tag1,tag2," so a tag filter is a LIKE on one column, the same on both backends.
    tags_text = peewee.CharField(max_length=1100, default=",")
    capacity = peewee.IntegerField()
    confirmed = peewee.IntegerField(default=0)
    offered = peewee.IntegerField(default=0)
    waitlisted = peewee.IntegerField(default=0)
    # Last waitlist sequence number handed out: orders the waitlist, never reused.
    waitlist_seq = peewee.BigIntegerField(default=0)
    # Waitlisted people beyond the first of each waitlisted group: `waitlisted -
    # waitlist_extra` is the number of waitlist entries (a group waits as one).
    waitlist_extra = peewee.IntegerField(default=0)
    # Confirmed registrations checked in at the event (attendance).
    checked_in = peewee.IntegerField(default=0)
    # Teams: 0/0 means the competition has no teams; team_deadline ends team formation.
    team_min = peewee.IntegerField(default=0)
    team_max = peewee.IntegerField(default=0)
    team_deadline = TimestampField(null=True)
    open_time = TimestampField()
    close_time = TimestampField()
    start_time = TimestampField()
    end_time = TimestampField()
    entry_fee = peewee.BigIntegerField(default=0)
    prize_split = JSONField(default=list)  # basis points, first place first
    offer_hold_s = peewee.IntegerField()
    reminder_lead_s = peewee.IntegerField()
    state = peewee.CharField(max_length=32, index=True)
    previous_state = peewee.CharField(max_length=32, default="")
    publish_time = TimestampField(null=True)
    # When the scheduler must look at it next (a time-based transition); NULL: nothing due.
    due_time = TimestampField(null=True, index=True)
    # When reminders must be queued; NULL once queued (or when not applicable).
    reminder_time = TimestampField(null=True, index=True)
    errors = JSONField(default=list)  # [{"message", "time"}], scheduler errors
    results_payload = peewee.BlobField(null=True)
    results_signature = peewee.BlobField(null=True)
    results_key_id = peewee.CharField(max_length=32, default="")
    create_time = TimestampField()
    update_time = TimestampField()


class CompetitionTransition(BaseModel):
    id = peewee.BigAutoField()
    competition = peewee.ForeignKeyField(Competition, backref="transitions", on_delete="CASCADE", index=True)
    from_state = peewee.CharField(max_length=32)
    to_state = peewee.CharField(max_length=32)
    reason = peewee.CharField(max_length=500)
    time = TimestampField()


class Registration(IdModel):
    competition = peewee.ForeignKeyField(Competition, backref="registrations", on_delete="CASCADE")
    user = peewee.ForeignKeyField(User, backref="registrations", on_delete="RESTRICT", index=True)
    state = peewee.CharField(max_length=32)
    # Waitlist order (the competition's waitlist_seq when it joined); NULL if never waitlisted.
    # The members of a group share one number: the group waits as one entry.
    waitlist_seq = peewee.BigIntegerField(null=True)
    # Registered together, all seats or none (a group registration or a team); NULL: alone.
    # (Indexed by migration 120, partially: only rows that have one, so that a single
    # registration's insert maintains no extra index.)
    group_id = peewee.CharField(max_length=26, null=True)
    # Whose balance holds the entry fee (a group's leader, the original holder after a
    # transfer); NULL: the registrant's own.
    payer = peewee.ForeignKeyField(User, null=True, on_delete="RESTRICT", backref="+", index=False)
    # When the registrant was checked in at the event.
    checkin_time = TimestampField(null=True)
    offer_expire_time = TimestampField(null=True, index=True)
    fee_held = peewee.BigIntegerField(default=0)
    create_time = TimestampField()
    update_time = TimestampField()
    confirm_time = TimestampField(null=True)

    class Meta:
        indexes = (
            (("competition", "user"), True),
            (("competition", "state", "waitlist_seq"), False),
        )


class Team(IdModel):
    """A team forming for a competition: its captain invites, invitees accept, and the
    captain registers the accepted members as one group (all seats or none)."""

    competition = peewee.ForeignKeyField(Competition, backref="teams", on_delete="CASCADE", index=True)
    display_name = peewee.CharField(max_length=100)
    captain = peewee.ForeignKeyField(User, on_delete="RESTRICT", backref="+")
    # Once registered, its members' registrations carry the team's id as their group_id.
    create_time = TimestampField()

    class Meta:
        table_name = "competition_team"
        indexes = ((("competition", "display_name"), True),)


class TeamMember(BaseModel):
    """One user's place in a team: INVITED by the captain, ACCEPTED by the user (the
    captain is ACCEPTED from the start). A user is in at most one team per competition."""

    id = peewee.BigAutoField()
    team = peewee.ForeignKeyField(Team, backref="members", on_delete="CASCADE")
    competition = peewee.ForeignKeyField(Competition, on_delete="CASCADE")
    user = peewee.ForeignKeyField(User, on_delete="CASCADE", backref="+")
    state = peewee.CharField(max_length=16)  # INVITED | ACCEPTED
    create_time = TimestampField()
    update_time = TimestampField()

    class Meta:
        table_name = "competition_team_member"
        indexes = ((("team", "user"), True), (("competition", "user", "state"), False))


class CompetitionEntry(IdModel):
    registration = peewee.ForeignKeyField(Registration, backref="entries", on_delete="CASCADE", unique=True)
    competition = peewee.ForeignKeyField(Competition, on_delete="CASCADE", index=True)
    user = peewee.ForeignKeyField(User, on_delete="RESTRICT")
    payload = peewee.BlobField(null=True)
    uri = peewee.CharField(max_length=2048, default="")
    digest = peewee.CharField(max_length=80)
    size_bytes = peewee.BigIntegerField(default=0)
    revision = peewee.IntegerField(default=1)
    submit_time = TimestampField()


class CompetitionResult(BaseModel):
    id = peewee.BigAutoField()
    competition = peewee.ForeignKeyField(Competition, backref="results", on_delete="CASCADE")
    rank = peewee.IntegerField()
    user = peewee.ForeignKeyField(User, on_delete="RESTRICT")
    score = peewee.DoubleField()
    prize = peewee.BigIntegerField(default=0)

    class Meta:
        indexes = (
            (("competition", "rank"), True),
            (("competition", "user"), True),
        )


class CompetitionNotification(BaseModel):
    """Which notifications a registration has been given: one row per (registration, kind),
    written in the same transaction as the change it announces. A new row is also queued to
    the shared webhook outbox (notify/); the unique key is what makes it exactly once."""

    id = peewee.BigAutoField()
    registration = peewee.ForeignKeyField(Registration, on_delete="CASCADE")
    user = peewee.ForeignKeyField(User, on_delete="CASCADE")
    competition = peewee.ForeignKeyField(Competition, on_delete="CASCADE", index=True)
    kind = peewee.CharField(max_length=32)  # confirmation | offer | reminder | results | cancellation
    payload = JSONField()
    # Webhook deliveries queued in the outbox for it (0: the user has no matching channel).
    deliveries_queued = peewee.IntegerField(default=0)
    create_time = TimestampField()

    class Meta:
        table_name = "competition_notifications"
        indexes = ((("registration", "kind"), True),)


ALL_MODELS: tuple[type[peewee.Model], ...] = (
    Competition,
    CompetitionTransition,
    Registration,
    CompetitionEntry,
    CompetitionResult,
    CompetitionNotification,
)
# Added by migration 120 (an install whose migration 40 ran before them gets them there).
TEAM_MODELS: tuple[type[peewee.Model], ...] = (Team, TeamMember)


_NEW_COLUMNS = {
    "competition": (
        ("waitlist_extra", "INTEGER NOT NULL DEFAULT 0"),
        ("checked_in", "INTEGER NOT NULL DEFAULT 0"),
        ("team_min", "INTEGER NOT NULL DEFAULT 0"),
        ("team_max", "INTEGER NOT NULL DEFAULT 0"),
        ("team_deadline", "BIGINT"),
    ),
    "registration": (
        ("group_id", "VARCHAR(26)"),
        ("payer_id", 'VARCHAR(26) REFERENCES "user" (id) ON DELETE RESTRICT'),
        ("checkin_time", "BIGINT"),
    ),
}


def add_groups_teams_checkin(db: peewee.Database) -> None:
    """Migration 120: group registration, payers, check-in, teams."""
    for table, wanted in _NEW_COLUMNS.items():
        present = {c.name for c in db.get_columns(table)}
        for column, ddl in wanted:
            if column not in present:
                db.execute_sql(f'ALTER TABLE "{table}" ADD COLUMN {column} {ddl}')
    db.execute_sql(
        'CREATE INDEX IF NOT EXISTS registration_group ON "registration" (competition_id, group_id)'
        " WHERE group_id IS NOT NULL"
    )
    db.create_tables(list(TEAM_MODELS), safe=True)
