"""Competitions: an organizer's event with a capacity, a registration window, an entry fee
and prizes. The domain coordinates the lifecycle (a persisted state machine advanced by the
scheduler), registration without overselling (one conditional seat UPDATE per registrant,
grouped into shared commits on PostgreSQL), the waitlist and its offers, entries, signed
results paid out from the fee pool, and the notices registrants get.

    competitions   create / get / list / update / publish / cancel
    lifecycle      transitions, advance_due (scheduler)
    registration   register, cancel_registration, registration lists
    groups         register_group: N users as one, all seats or none
    attendance     signed tickets, check-in, transfer of a seat
    teams          captains, invitations, acceptances, team registration
    waitlist       promotion, offers (accept, expire), reminders (scheduler)
    results        entries, publish_results, get_results, leaderboard
    notifications  what registrants are told (the one user of notify/)
    export         the CSV export
"""

from coordd.domain.competition.attendance import (
    TICKET_CONTEXT,
    CheckInResult,
    Ticket,
    check_in,
    get_ticket,
    read_ticket,
    transfer_registration,
)
from coordd.domain.competition.bulk import Ask, Registered
from coordd.domain.competition.common import group_name
from coordd.domain.competition.competitions import (
    DRAFT_ONLY,
    UPDATABLE,
    cancel_competition,
    create_competition,
    get_competition,
    list_competitions,
    publish_competition,
    update_competition,
)
from coordd.domain.competition.export import EXPORT_COLUMNS, export_batches
from coordd.domain.competition.groups import GroupView, register_group
from coordd.domain.competition.lifecycle import advance_due
from coordd.domain.competition.notifications import notifications_of
from coordd.domain.competition.registration import (
    MAX_BATCH,
    cancel_registration,
    list_my_registrations,
    list_registrations,
    register,
    register_call,
    register_many,
)
from coordd.domain.competition.results import (
    RESULTS_CONTEXT,
    get_results,
    leaderboard,
    publish_results,
    submit_entry,
)
from coordd.domain.competition.settings import (
    DEFAULT_SETTINGS,
    CompetitionSettings,
    configure,
    settings_of,
)
from coordd.domain.competition.states import (
    ACTIVE,
    CANCELLATION,
    CANCELLED,
    CONFIRMATION,
    CONFIRMED,
    DRAFT,
    ENDED,
    FAILED,
    OFFER,
    OFFER_EXPIRED,
    OFFERED,
    OPEN,
    REG_CANCELLED,
    REGISTRATION_CLOSED,
    REGISTRATION_STATES,
    REMINDER,
    RESULTS,
    RESULTS_PUBLISHED,
    RUNNING,
    SEATING,
    SETTLED,
    STATES,
    TERMINAL,
    WAITLISTED,
)
from coordd.domain.competition.teams import (
    TeamView,
    accept_invite,
    create_team,
    get_team,
    invite_member,
    list_teams,
    register_team,
    remove_member,
    team_name,
)
from coordd.domain.competition.validation import MAX_CAPACITY, MAX_TAGS
from coordd.domain.competition.views import (
    CompetitionInput,
    CompetitionView,
    Entry,
    LeaderboardRow,
    RegistrationView,
    SignedResults,
)
from coordd.domain.competition.waitlist import accept_offer, expire_offers, queue_reminders

__all__ = [
    "ACTIVE",
    "CANCELLATION",
    "CANCELLED",
    "CONFIRMATION",
    "CONFIRMED",
    "DEFAULT_SETTINGS",
    "DRAFT",
    "DRAFT_ONLY",
    "ENDED",
    "EXPORT_COLUMNS",
    "FAILED",
    "MAX_BATCH",
    "MAX_CAPACITY",
    "MAX_TAGS",
    "OFFER",
    "OFFERED",
    "OFFER_EXPIRED",
    "OPEN",
    "REGISTRATION_CLOSED",
    "REGISTRATION_STATES",
    "REG_CANCELLED",
    "REMINDER",
    "RESULTS",
    "RESULTS_CONTEXT",
    "RESULTS_PUBLISHED",
    "RUNNING",
    "SEATING",
    "SETTLED",
    "STATES",
    "TERMINAL",
    "TICKET_CONTEXT",
    "UPDATABLE",
    "WAITLISTED",
    "Ask",
    "CheckInResult",
    "CompetitionInput",
    "CompetitionSettings",
    "CompetitionView",
    "Entry",
    "GroupView",
    "LeaderboardRow",
    "Registered",
    "RegistrationView",
    "SignedResults",
    "TeamView",
    "Ticket",
    "accept_invite",
    "accept_offer",
    "advance_due",
    "cancel_competition",
    "cancel_registration",
    "check_in",
    "configure",
    "create_competition",
    "create_team",
    "expire_offers",
    "export_batches",
    "get_competition",
    "get_results",
    "get_team",
    "get_ticket",
    "group_name",
    "invite_member",
    "leaderboard",
    "list_competitions",
    "list_my_registrations",
    "list_registrations",
    "list_teams",
    "notifications_of",
    "publish_competition",
    "publish_results",
    "queue_reminders",
    "read_ticket",
    "register",
    "register_call",
    "register_group",
    "register_many",
    "register_team",
    "remove_member",
    "settings_of",
    "submit_entry",
    "team_name",
    "transfer_registration",
    "update_competition",
]
