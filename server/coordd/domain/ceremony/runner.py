"""Running verifications so a restart never stalls a queue.

Each contribution being verified holds a short lease (`LEASE_S`), renewed while its verifier
runs. A lease that expires belongs to a process that died: the contribution is claimed again
(`recover`, a scheduler task every second) and verified at once, so after a SIGKILL the
verdict comes within the lease plus the verifier's own time. A process that shuts down
(SIGTERM) kills its verifiers and releases their leases: the next process starts over at
once, and an attempt stopped that way does not count. Verifications run on a small pool of
their own, never on the event loop or the database pool.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta

import structlog

import coordd.domain.ceremony.verifier as verifier
from coordd.domain.ceremony.spec import VERIFY_LEASE_S
from coordd.domain.ceremony.uploads import blobs_of
from coordd.domain.ceremony.verification import finish_verification, get_contribution, verification_job
from coordd.domain.ceremony.verifier import VerifyResult
from coordd.runtime import Runtime
from coordd.store.ceremony import leases, queries
from coordd.store.ceremony.models import Contribution

log = structlog.get_logger("coordd.ceremony")

LEASE_S = VERIFY_LEASE_S
RENEW_S = 2.0
# Verifications interrupted this often (crashes, not shutdowns) make the contribution invalid.
MAX_ATTEMPTS = 3
THREADS = 2


class Runner:
    """One process's verifications: at most one run per contribution at a time."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="coordd-verify")
        self.running: dict[str, Future[Contribution]] = {}
        self.procs = verifier.Processes()
        self.stopped = False
        self.lock = threading.RLock()

    def submit(self, contribution_id: str) -> Future[Contribution]:
        with self.lock:
            fut = self.running.get(contribution_id)
            if fut is None and self.stopped:
                fut = Future()
                fut.set_exception(verifier.VerifierStopped("the daemon is shutting down"))
                return fut
            if fut is None:
                fut = self.pool.submit(self._verify, contribution_id)
                self.running[contribution_id] = fut
                fut.add_done_callback(lambda _: self._forget(contribution_id))
            return fut

    def _forget(self, contribution_id: str) -> None:
        with self.lock:
            self.running.pop(contribution_id, None)

    def in_flight(self) -> list[Future[Contribution]]:
        with self.lock:
            return list(self.running.values())

    def stop(self) -> None:
        """Shutdown: running verifiers are killed and queued ones skip (their leases released)."""
        self.stopped = True
        self.procs.kill_all()
        self.pool.shutdown(wait=False)

    def _renew(self, contribution_id: str) -> bool:
        with self.rt.store.write() as tx:
            return leases.renew_lease(contribution_id, tx.now + timedelta(seconds=LEASE_S))

    def _verify(self, contribution_id: str) -> Contribution:
        if self.stopped:  # queued when shutdown began: the next process takes it at once
            self._release(contribution_id)
            raise verifier.VerifierStopped("the daemon is shutting down")
        job = verification_job(self.rt, contribution_id)
        if job is None:
            return get_contribution(contribution_id)
        attempts = int((get_contribution(contribution_id).extra or {}).get("verify_attempts", 1))
        if attempts > MAX_ATTEMPTS:
            result = VerifyResult(
                False, f"verification was interrupted {attempts - 1} times without a verdict", 0.0
            )
        else:
            try:
                result = verifier.run(
                    blobs_of(self.rt),
                    job,
                    procs=self.procs,
                    heartbeat=lambda: self._renew(contribution_id),
                    heartbeat_s=RENEW_S,
                )
            except verifier.VerifierStopped:
                self._release(contribution_id)
                raise
        return finish_verification(self.rt, contribution_id, result)

    def _release(self, contribution_id: str) -> None:
        """This attempt was stopped by a shutdown: it does not count, and the lease is free."""
        try:
            contrib = get_contribution(contribution_id)
            extra = dict(contrib.extra or {})
            extra["verify_attempts"] = max(0, int(extra.get("verify_attempts", 1)) - 1)
            with self.rt.store.write() as tx:
                leases.release_lease(contribution_id, tx.now, extra)
        except Exception as exc:  # the lease then simply expires
            log.warning(
                "could not release a verification lease", contribution=contribution_id, error=str(exc)
            )


_runners: weakref.WeakKeyDictionary[Runtime, Runner] = weakref.WeakKeyDictionary()
_runners_lock = threading.Lock()


def runner_of(rt: Runtime) -> Runner:
    with _runners_lock:
        runner = _runners.get(rt)
        if runner is None:
            runner = _runners[rt] = Runner(rt)
        return runner


def verify(rt: Runtime, contribution_id: str) -> Future[Contribution]:
    """Verifies a contribution this process has just received (its lease is fresh)."""
    return runner_of(rt).submit(contribution_id)


def stop(rt: Runtime) -> None:
    runner_of(rt).stop()


def claim(rt: Runtime, contribution_id: str) -> bool:
    """Takes over an expired lease, counting an attempt."""
    contrib = queries.find_contribution(contribution_id)
    if contrib is None:
        return False
    extra = dict(contrib.extra or {})
    extra["verify_attempts"] = int(extra.get("verify_attempts", 1)) + 1
    with rt.store.write() as tx:
        return leases.take_lease(contribution_id, tx.now, tx.now + timedelta(seconds=LEASE_S), extra)


def recover(rt: Runtime, batch: int = 50, wait: bool = False) -> dict[str, int]:
    """Scheduler task: verifications whose process died are claimed and run again at once
    (on the runner: the task itself returns at once). With `wait`, it returns once every
    verification in flight here has its verdict (tests tick the scheduler that way)."""
    runner = runner_of(rt)
    if runner.stopped:
        return {}
    claimed = 0
    for contribution_id in leases.stale_verifications(rt.now(), batch):
        if contribution_id in runner.running or not claim(rt, contribution_id):
            continue
        log.warning("verification resumed: its previous run stopped", contribution=contribution_id)
        runner.submit(contribution_id)
        claimed += 1
    for fut in runner.in_flight() if wait else []:
        with contextlib.suppress(Exception):  # a stop or a failure is logged where it happens
            fut.result()
    return {"resumed": claimed} if claimed else {}
