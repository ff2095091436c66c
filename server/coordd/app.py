"""Builds and runs the grpc.aio server: servicers (each method wrapped by the call pipeline,
api/interceptors.py), health, reflection, scheduler, metrics, and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from coordd import metrics
from coordd.api.auth import AuthServicer
from coordd.api.ceremony import CeremonyServicer
from coordd.api.competition import CompetitionServicer
from coordd.api.interceptors import Pipeline
from coordd.api.jobs import JobServicer
from coordd.api.ledger import LedgerServicer
from coordd.api.limits import Limits
from coordd.api.node import NodeServicer
from coordd.api.notification import NotificationServicer
from coordd.api.registration import Registrar
from coordd.api.status import StatusServicer
from coordd.config import Settings
from coordd.core.clock import utcnow
from coordd.events.bus import HEALTH_SERVICE
from coordd.runtime import Runtime
from coordd.scheduler.core import Elector, PostgresElector, Scheduler
from coordd.scheduler.tasks import all_tasks
from coordd.store.db import prepare_data_dir
from coordd.store.lock import FileLock
from coordd.store.migrations import migrate
from coordd.store.probe import DatabaseProbe
from coordd.tls import ServerTls, TlsError, add_port
from coordd_client.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    competition_pb2,
    competition_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    status_pb2,
    status_pb2_grpc,
)

log = structlog.get_logger("coordd")
# New calls gRPC core may hold while the event loop is busy (its default: 1,000 soft, 3,000
# hard), and for how long. grpc.aio takes one new call per event-loop round trip, so a busy
# daemon takes a reconnecting fleet's streams slowly; core cancels a call left waiting longer
# than its default of 30 s (the CANCELLED streams bench/fleet.py saw, whose reconnects fed the
# overload): they wait up to two minutes instead.
PENDING_CALLS = 20_000
UNREQUESTED_CALL_S = 120
# The event bus's health (HEALTH_SERVICE): NOT_SERVING while the configured bus is down.
_SERVING = {True: health_pb2.HealthCheckResponse.SERVING, False: health_pb2.HealthCheckResponse.NOT_SERVING}


class StartupError(Exception):
    """A reason the daemon cannot start, printed as one line."""


@dataclass(frozen=True)
class Service:
    name: str
    register: Callable[[Any, grpc.aio.Server], None]
    make: Callable[[Runtime, Scheduler], Any]


def services() -> list[Service]:
    """Every coordd.v1 service; each domain adds its entry here."""
    return [
        Service(
            auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
            auth_pb2_grpc.add_AuthServiceServicer_to_server,
            lambda rt, _: AuthServicer(rt),
        ),
        Service(
            status_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name,
            status_pb2_grpc.add_StatusServiceServicer_to_server,
            StatusServicer,
        ),
        Service(
            ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name,
            ledger_pb2_grpc.add_LedgerServiceServicer_to_server,
            lambda rt, _: LedgerServicer(rt),
        ),
        Service(
            job_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
            job_pb2_grpc.add_JobServiceServicer_to_server,
            lambda rt, _: JobServicer(rt),
        ),
        Service(
            competition_pb2.DESCRIPTOR.services_by_name["CompetitionService"].full_name,
            competition_pb2_grpc.add_CompetitionServiceServicer_to_server,
            lambda rt, _: CompetitionServicer(rt),
        ),
        Service(
            node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
            node_pb2_grpc.add_NodeServiceServicer_to_server,
            lambda rt, _: NodeServicer(rt),
        ),
        Service(
            NotificationServicer.SERVICE_NAME,
            NotificationServicer.register,
            lambda rt, _: NotificationServicer(rt),
        ),
        Service(
            CeremonyServicer.SERVICE_NAME,
            CeremonyServicer.register,
            lambda rt, _: CeremonyServicer(rt),
        ),
    ]


def apply_domain_settings(rt: Runtime) -> None:
    """Hands each domain its knobs from the one Settings object."""
    from coordd.domain import competition, jobs

    s = rt.settings
    jobs.set_policy(
        rt,
        jobs.JobPolicy(
            fee_bps=s.job_fee_bps,
            default_max_attempts=s.job_default_max_attempts,
            backoff_base_s=s.job_backoff_base_s,
            backoff_max_s=s.job_backoff_max_s,
            payload_retention_s=s.job_payload_retention_s,
            max_snoozes=s.job_max_snoozes,
        ),
    )
    competition.configure(
        rt,
        default_offer_hold_s=s.competition_offer_hold_s,
        default_reminder_lead_s=s.competition_reminder_lead_s,
        max_entry_bytes=s.competition_max_entry_bytes,
        max_errors=s.competition_max_errors,
    )


class App:
    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
        *,
        reuse_port: bool = False,
        slot: int | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        # True only in a child of `coordd serve --processes` (coordd.supervisor), whose
        # supervisor holds the port: a lone daemon never shares its port with anyone.
        self.reuse_port = reuse_port
        self.slot = slot
        self.rt: Runtime | None = None
        self.server: grpc.aio.Server | None = None
        self.scheduler: Scheduler | None = None
        self.health = health.aio.HealthServicer()
        self.port = 0
        self._lock: FileLock | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._service_names: list[str] = []
        self._metrics_server: Any = None
        self.tls: ServerTls | None = None
        self.limits: Limits | None = None
        # The health probe's own thread and connection (see _watch_database).
        self._probe: DatabaseProbe | None = None
        self._probe_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coordd-health")
        self._probe_running: Future[None] | None = None
        self.health_checks = 0
        self._reload_task: asyncio.Task[bool] | None = None
        self.web: Any = None  # coordd.web.WebServer when http_listen is set
        self.http_port = 0

    async def start(self) -> int:
        s = self.settings
        prepare_data_dir(Path(s.data_dir))  # 0700, before the lock file or any key is created
        if s.backend == "sqlite":
            self._lock = FileLock(s.db_path().with_suffix(".db.lock"))
            self._lock.acquire()
        try:
            return await self._start()
        except BaseException:
            await self.stop(grace=0)
            raise

    async def _start(self) -> int:
        s = self.settings
        rt = self.rt = Runtime(s, self.clock)
        apply_domain_settings(rt)
        try:
            applied = await rt.run(migrate, rt.store)
        except Exception as exc:
            raise StartupError(f"cannot open the database ({s.backend}): {exc}") from None
        if applied:
            log.info("migrations applied", versions=applied)
        self._probe = DatabaseProbe(rt.store)
        await rt.bus.start()
        elector = PostgresElector() if rt.store.is_postgres else Elector()
        self.scheduler = Scheduler(rt, all_tasks(), elector)
        try:
            limits = self.limits = Limits(s)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        server = self.server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1 if self.reuse_port else 0),
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.max_concurrent_streams", 100_000),
                # Calls gRPC core holds until the event loop takes them: a fleet of agents
                # reconnecting at once (after a restart) queues instead of being cancelled.
                ("grpc.server.max_pending_requests", PENDING_CALLS),
                ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS),
                ("grpc.server_max_unrequested_time_in_server", UNREQUESTED_CALL_S),
            ],
        )
        # No interceptors: every handler is wrapped once, here, as it is registered.
        registrar = Registrar(server, Pipeline(rt, limits))
        for service in services():
            service.register(service.make(rt, self.scheduler), registrar)
            self._service_names.append(service.name)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registrar)
        names = [
            *self._service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        # What reflection.enable_server_reflection does for a grpc.aio server.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(names), registrar
        )
        try:
            self.port, self.tls = add_port(server, s)
        except TlsError as exc:
            raise StartupError(str(exc)) from None
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {s.listen}: {exc}") from None
        if self.port == 0:
            raise StartupError(f"cannot listen on {s.listen}: address in use or not available")
        await server.start()
        await self._set_serving(True)
        self._health_task = asyncio.create_task(self._watch_database(), name="health")
        if s.scheduler_enabled:
            await self.scheduler.start()
        metrics.register_instance(rt.instance_id, self.slot)
        if s.http_listen:  # the web pages: same process and event loop, their own port
            from coordd.web import WebServer

            self.web = WebServer(rt)
            try:
                self.http_port = await self.web.start(s.http_listen)
            except OSError as exc:
                raise StartupError(f"cannot serve the web pages on {s.http_listen}: {exc}") from None
        try:
            self._metrics_server = metrics.serve_metrics(s.metrics_host, s.metrics_port)
        except OSError as exc:
            raise StartupError(f"cannot serve metrics on {s.metrics_host}:{s.metrics_port}: {exc}") from None
        log.info(
            "coordd serving",
            listen=f"{s.listen.rpartition(':')[0]}:{self.port}",
            backend=s.backend,
            tls="off" if self.tls is None else "mutual" if self.tls.require_client_auth else "on",
            bus=rt.bus.kind,
            instance=rt.instance_id,
            **({} if self.slot is None else {"slot": self.slot}),
            version=rt.version,
        )
        return self.port

    async def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self._service_names):
            await self.health.set(name, status)

    async def _watch_database(self) -> None:
        """Health follows the database: NOT_SERVING while it cannot be reached.

        The probe runs on its own thread with its own connection, never queued behind the
        shared database pool: a pool saturated by slow work (password hashing, long
        transactions) is not an unreachable database. A probe that has not answered within
        health_check_timeout_s counts as a failure; while it hangs, no second one is started."""
        assert self.rt is not None
        serving = True
        # Not `while True`: on Python 3.11 asyncio.wait_for below can swallow the stop's
        # cancellation (when the ping finishes at that moment), and App.stop awaits this task.
        while not self.rt.stopping.is_set():
            await self.health.set(HEALTH_SERVICE, _SERVING[self.rt.bus.healthy])
            await asyncio.sleep(self.settings.health_check_interval_s)
            try:
                await self._probe_database()
                ok = True
            except Exception as exc:
                ok = False
                if serving:
                    reason = str(exc) or type(exc).__name__
                    log.error("database unreachable; health is NOT_SERVING", error=reason)
            self.health_checks += 1
            if ok != serving:
                if ok:
                    log.info("database reachable again; health is SERVING")
                await self._set_serving(ok)
                serving = ok

    async def _probe_database(self) -> None:
        timeout = self.settings.health_check_timeout_s
        running = self._probe_running
        if running is not None and not running.done():
            raise TimeoutError(f"the previous health probe has not answered for over {timeout:g} s")
        assert self._probe is not None
        self._probe_running = self._probe_thread.submit(self._probe.check)
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._probe_running)), timeout)

    async def stop(self, grace: float | None = None) -> None:
        """Stops accepting calls, lets unary calls finish within the grace period, ends
        streams with UNAVAILABLE, then stops the scheduler and closes the pool."""
        grace = self.settings.shutdown_grace_s if grace is None else grace
        if self.rt is not None:
            self.rt.stopping.set()
            for task in list(self.rt.parked_streams):
                task.cancel()
        if self.web is not None:
            await self.web.stop()
        if self.server is not None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(grace)
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self._probe is not None:
            with contextlib.suppress(RuntimeError):  # already shut down by an earlier stop()
                self._probe_thread.submit(self._probe.close)
        self._probe_thread.shutdown(wait=False)
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.limits is not None:
            await self.limits.close()
        if self.rt is not None:
            await self.rt.bus.close()
            await asyncio.to_thread(self.rt.close)
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.shutdown)
            self._metrics_server.server_close()
        if self._lock is not None:
            self._lock.release()

    def reload_tls(self) -> bool:
        """What SIGHUP does: re-read the TLS files (blocking: call off the event loop)."""
        if self.tls is None:
            log.info("SIGHUP: TLS is not configured; nothing to reload")
            return False
        return self.tls.reload()

    def _on_sighup(self) -> None:
        if self._reload_task is None or self._reload_task.done():
            self._reload_task = asyncio.create_task(asyncio.to_thread(self.reload_tls), name="tls-reload")

    async def serve_forever(self, port_file: str | None = None) -> None:
        port = await self.start()
        if self.settings.gc_threshold:
            # Everything built at start-up lives as long as the process: keep it out of the
            # collector's scans, and scan the young generation less often.
            gc.freeze()
            gc.set_threshold(self.settings.gc_threshold, 20, 100)
        if port_file:
            with open(port_file, "w") as fh:
                fh.write(str(port))
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        await stop.wait()
        log.info("shutting down", grace_s=self.settings.shutdown_grace_s)
        await self.stop()
        log.info("stopped")
