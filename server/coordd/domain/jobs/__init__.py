"""Jobs: escrowed budgets, leased claims, retries with backoff, signed attestations, payment.

States: queued -> running -> succeeded | (queued again for a retry) | failed | cancelled.
Every transition happens in one write transaction together with the money it moves:
submit holds the budget, success releases it to the provider (minus the platform fee),
a dead letter or a cancellation refunds it. A lease is (job, attempt, lease id, provider);
the attempt number is the fencing token, so a worker whose lease was rescued and given to
someone else cannot complete, fail or heartbeat the job any more.

Modules: `states` and `policy` (names, limits, knobs), `specs` (validated input),
`submission`, `leases` (claims, heartbeats, hand-backs), `completion` (results and payment)
with `attestation` (the signed statement), `retry` (backoff, dead letters, requeue),
`cancellation`, `unique` (deduplicated submissions), `graph` (parents, pending jobs and their
release), `control` (snooze), `schedules` with `cron` (periodic jobs), `limits` (concurrency
caps), `fairness` (fair share, aging), `views` (reads and queue stats), `maintenance` (the
scheduler's tasks), `transitions` (the state changes they share). Statements live in
`coordd.store.jobs`; money
moves through `coordd.domain.ledger`.
"""

from coordd.domain.jobs.attestation import Attestation, attestation_of, statement, statement_json
from coordd.domain.jobs.cancellation import cancel
from coordd.domain.jobs.completion import Completion, complete, complete_and_claim, complete_many
from coordd.domain.jobs.control import snooze
from coordd.domain.jobs.fairness import age_priorities
from coordd.domain.jobs.leases import (
    Heartbeat,
    Leased,
    claim,
    deliverable,
    heartbeat,
    heartbeat_many,
    largest_reply_budget,
    return_leases,
)
from coordd.domain.jobs.limits import list_limits, set_limit
from coordd.domain.jobs.maintenance import (
    enforce_deadlines,
    fail_undeliverable,
    purge_payloads,
    release_pending,
    rescue_expired_leases,
)
from coordd.domain.jobs.policy import (
    DEFAULT_POLICY,
    JobPolicy,
    backoff_s,
    platform_fee,
    policy_of,
    set_policy,
)
from coordd.domain.jobs.retry import fail, requeue
from coordd.domain.jobs.schedules import create as create_schedule
from coordd.domain.jobs.schedules import delete as delete_schedule
from coordd.domain.jobs.schedules import fire_due as fire_schedules
from coordd.domain.jobs.schedules import get as get_schedule
from coordd.domain.jobs.schedules import list_mine as list_schedules
from coordd.domain.jobs.schedules import set_paused as pause_schedule
from coordd.domain.jobs.schedules import spec_of as schedule_spec
from coordd.domain.jobs.specs import (
    JobSpec,
    LeaseRef,
    Payload,
    UniqueSpec,
    Worker,
    check_lease,
    check_payload,
    check_worker,
    claim_bytes,
    make_spec,
    reply_budget,
    with_input,
    with_scheduling,
)
from coordd.domain.jobs.states import (
    CANCELLED,
    CLAIM_REPLY_HEADROOM,
    DEFAULT_REPLY_BYTES,
    FAILED,
    KINDS,
    LEASED_JOB_OVERHEAD,
    MAX_ATTEMPTS,
    MAX_CLAIM,
    MAX_INLINE_BYTES,
    MAX_LABELS,
    MAX_PARENTS,
    MAX_PRIORITY,
    MAX_SUBMIT_BATCH,
    MAX_TIMEOUT_MS,
    MIN_REPLY_BYTES,
    PENDING,
    QUEUE_KEY,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    UNFINISHED,
)
from coordd.domain.jobs.submission import (
    Submitted,
    insert_job,
    insert_jobs,
    insert_submissions,
    submit,
    submit_batch,
    submit_many,
    submit_one,
)
from coordd.domain.jobs.views import (
    JobView,
    QueueStats,
    attempt_history,
    get_attestation,
    get_job,
    list_jobs,
    payloads,
    queue_position,
    queue_stats,
    watch_view,
)

# The job row as the domain returns it (submit, cancel, fail, requeue, views): converters
# take it from here, not from the store.
from coordd.store.jobs.models import Job

__all__ = [
    "CANCELLED",
    "CLAIM_REPLY_HEADROOM",
    "DEFAULT_POLICY",
    "DEFAULT_REPLY_BYTES",
    "FAILED",
    "KINDS",
    "LEASED_JOB_OVERHEAD",
    "MAX_ATTEMPTS",
    "MAX_CLAIM",
    "MAX_INLINE_BYTES",
    "MAX_LABELS",
    "MAX_PARENTS",
    "MAX_PRIORITY",
    "MAX_SUBMIT_BATCH",
    "MAX_TIMEOUT_MS",
    "MIN_REPLY_BYTES",
    "PENDING",
    "QUEUED",
    "QUEUE_KEY",
    "RUNNING",
    "SUCCEEDED",
    "TERMINAL",
    "UNFINISHED",
    "Attestation",
    "Completion",
    "Heartbeat",
    "Job",
    "JobPolicy",
    "JobSpec",
    "JobView",
    "LeaseRef",
    "Leased",
    "Payload",
    "QueueStats",
    "Submitted",
    "UniqueSpec",
    "Worker",
    "age_priorities",
    "attempt_history",
    "attestation_of",
    "backoff_s",
    "cancel",
    "check_lease",
    "check_payload",
    "check_worker",
    "claim",
    "claim_bytes",
    "complete",
    "complete_and_claim",
    "complete_many",
    "create_schedule",
    "delete_schedule",
    "deliverable",
    "enforce_deadlines",
    "fail",
    "fail_undeliverable",
    "fire_schedules",
    "get_attestation",
    "get_job",
    "get_schedule",
    "heartbeat",
    "heartbeat_many",
    "insert_job",
    "insert_jobs",
    "insert_submissions",
    "largest_reply_budget",
    "list_jobs",
    "list_limits",
    "list_schedules",
    "make_spec",
    "pause_schedule",
    "payloads",
    "platform_fee",
    "policy_of",
    "purge_payloads",
    "queue_position",
    "queue_stats",
    "release_pending",
    "reply_budget",
    "requeue",
    "rescue_expired_leases",
    "return_leases",
    "schedule_spec",
    "set_limit",
    "set_policy",
    "snooze",
    "statement",
    "statement_json",
    "submit",
    "submit_batch",
    "submit_many",
    "submit_one",
    "watch_view",
    "with_input",
    "with_scheduling",
]
