"""Trusted-setup ceremonies: a coordinator's ceremony with circuits; per circuit a fair FIFO
queue with one current contributor at a time, turn timeouts with penalties, resumable uploads
verified off the event loop, a hash chain of contributions with signed receipts, and
finalization with a beacon. Where each rule lives:

    machine        the ceremony's states; opening/closing at its times (run_lifecycle)
    circuits       adding and listing circuits
    participants   join, leave, progress reports
    queue          a circuit's queue and turn: enter, promote the head, release, advance
    deadlines      missed deadlines: a timed-out contributor's turn passes on (time_out)
    uploads        who may upload what and when; a finished upload becomes a contribution
    downloads      who may download which contribution
    verification   the verifier's verdict, the chain, receipts
    verifiers      the verifiers the operator declares; a ceremony's choice by name
    runner         running verifications under a lease; resuming those a restart stopped
    finalization   the coordinator's final contributions, then FINALIZED
    transcripts    the public transcript
    snapshots      the queue read model WatchQueue streams share; watch: what a stream shows
    repair         states with no way forward
    spec, timeouts, names, states, lookup, emit, receipts, verifier: the pieces they share

Every change to a circuit's queue happens with that circuit's row locked (FOR UPDATE on
PostgreSQL; SQLite serializes writers); circuits are always locked in sequence order. Each
change emits an event naming the circuit's queue key, which WatchQueue streams wait on.
"""

from coordd.domain.ceremony import states, timeouts, verifier, verifiers
from coordd.domain.ceremony.circuits import add_circuit, list_circuits, waiting_counts
from coordd.domain.ceremony.deadlines import fire_deadlines, time_out
from coordd.domain.ceremony.downloads import DownloadPlan, open_download
from coordd.domain.ceremony.finalization import finalize_ceremony, finalize_circuit
from coordd.domain.ceremony.lookup import get_ceremony, get_circuit
from coordd.domain.ceremony.machine import (
    close_ceremony,
    create_ceremony,
    list_ceremonies,
    open_ceremony,
    pause_ceremony,
    resume_ceremony,
    run_lifecycle,
    update_ceremony,
)
from coordd.domain.ceremony.names import (
    QueueKey,
    artifact_key,
    ceremony_name,
    circuit_name,
    contribution_key,
    contribution_name,
    participant_name,
    queue_key,
)
from coordd.domain.ceremony.participants import (
    get_participation,
    join,
    leave,
    list_participants,
    report_progress,
)
from coordd.domain.ceremony.repair import repair
from coordd.domain.ceremony.runner import recover as recover_verifications
from coordd.domain.ceremony.runner import stop as stop_verifications
from coordd.domain.ceremony.runner import verify as verify_contribution
from coordd.domain.ceremony.snapshots import (
    ParticipantView,
    QueueSnapshot,
    QueueSnapshots,
    participant_view,
    queue_snapshot,
)
from coordd.domain.ceremony.spec import (
    ARTIFACT_KINDS,
    CONTRIBUTION_KIND,
    DEFAULT_MAX_CONTRIBUTION_BYTES,
    DEFAULT_START_WINDOW_S,
    DEFAULT_VERIFY_TIMEOUT_S,
    HASH_BYTES,
    MAX_CHUNK_BYTES,
    MAX_VERIFY_TIMEOUT_S,
    UPDATABLE,
    VERIFY_GRACE_S,
    CeremonySpec,
    circuit_turn_timeout,
    rule_of,
)
from coordd.domain.ceremony.transcripts import transcript
from coordd.domain.ceremony.uploads import (
    UploadPlan,
    begin_upload,
    blobs_of,
    commit_chunk,
    earlier_upload,
    finish_artifact_upload,
    finish_contribution_upload,
    upload_status,
)
from coordd.domain.ceremony.verification import (
    finish_verification,
    get_contribution,
    last_contribution,
    verification_job,
)
from coordd.domain.ceremony.watch import WatchState, watch_state

# The rows the domain hands out, for annotations: read them, never query them.
from coordd.store.ceremony.models import Ceremony, CeremonyUpload, Circuit, Contribution, Participant

__all__ = [
    "ARTIFACT_KINDS",
    "CONTRIBUTION_KIND",
    "DEFAULT_MAX_CONTRIBUTION_BYTES",
    "DEFAULT_START_WINDOW_S",
    "DEFAULT_VERIFY_TIMEOUT_S",
    "HASH_BYTES",
    "MAX_CHUNK_BYTES",
    "MAX_VERIFY_TIMEOUT_S",
    "UPDATABLE",
    "VERIFY_GRACE_S",
    "Ceremony",
    "CeremonySpec",
    "CeremonyUpload",
    "Circuit",
    "Contribution",
    "DownloadPlan",
    "Participant",
    "ParticipantView",
    "QueueKey",
    "QueueSnapshot",
    "QueueSnapshots",
    "UploadPlan",
    "WatchState",
    "add_circuit",
    "artifact_key",
    "begin_upload",
    "blobs_of",
    "ceremony_name",
    "circuit_name",
    "circuit_turn_timeout",
    "close_ceremony",
    "commit_chunk",
    "contribution_key",
    "contribution_name",
    "create_ceremony",
    "earlier_upload",
    "finalize_ceremony",
    "finalize_circuit",
    "finish_artifact_upload",
    "finish_contribution_upload",
    "finish_verification",
    "fire_deadlines",
    "get_ceremony",
    "get_circuit",
    "get_contribution",
    "get_participation",
    "join",
    "last_contribution",
    "leave",
    "list_ceremonies",
    "list_circuits",
    "list_participants",
    "open_ceremony",
    "open_download",
    "participant_name",
    "participant_view",
    "pause_ceremony",
    "queue_key",
    "queue_snapshot",
    "recover_verifications",
    "repair",
    "report_progress",
    "resume_ceremony",
    "rule_of",
    "run_lifecycle",
    "states",
    "stop_verifications",
    "time_out",
    "timeouts",
    "transcript",
    "update_ceremony",
    "upload_status",
    "verification_job",
    "verifier",
    "verifiers",
    "verify_contribution",
    "waiting_counts",
    "watch_state",
]
