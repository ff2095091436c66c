"""The job states, kinds and limits, and the watch key of the queue (the api uses them too)."""

from __future__ import annotations

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
KINDS = ("inference", "training")

# Watch key every waiting worker listens on: a job became claimable.
QUEUE_KEY = "jobs:queue"

MAX_INLINE_BYTES = 1024 * 1024
MAX_LABELS = 32
MAX_PRIORITY = 9
MAX_ATTEMPTS = 20
MAX_CLAIM = 100
MAX_SUBMIT_BATCH = 100
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
