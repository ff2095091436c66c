"""The job states, kinds and limits, and the watch key of the queue (the api uses them too)."""

from __future__ import annotations

# Not claimable yet: before its schedule time or a snooze's end, or until its parents succeed.
PENDING = "pending"
QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
# Budget held, not finished.
UNFINISHED = (PENDING, QUEUED, RUNNING)
KINDS = ("inference", "training")

# Watch key every waiting worker listens on: a job became claimable.
QUEUE_KEY = "jobs:queue"

MAX_INLINE_BYTES = 1024 * 1024
MAX_LABELS = 32
MAX_PRIORITY = 9
MAX_ATTEMPTS = 20
MAX_CLAIM = 100
MAX_SUBMIT_BATCH = 100
MAX_PARENTS = 32
# Furthest a schedule time may lie ahead, and a snooze.
MAX_SCHEDULE_AHEAD_S = 366 * 24 * 3600
MAX_SNOOZE_S = 30 * 24 * 3600
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000

# Claim replies. A worker accepts this much unless it says otherwise (gRPC's default receive
# limit); a reply keeps this much of the message limit free for its own framing; and a leased
# job adds at most this much beyond its variable-length columns (input data or URI, model ref,
# labels): names, ids, the lease, times, numbers and field tags (see specs.claim_bytes).
DEFAULT_REPLY_BYTES = 4 * 1024 * 1024
MIN_REPLY_BYTES = 32 * 1024
CLAIM_REPLY_HEADROOM = 16 * 1024
LEASED_JOB_OVERHEAD = 1024
