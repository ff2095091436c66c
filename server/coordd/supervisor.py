"""`coordd serve --processes N`: one supervisor, N serving child processes on one port.

The pattern of grpc's own Python example (examples/python/multiprocessing): the supervisor
reserves the port and starts the children as fresh interpreters (exec, never a fork of a
process that has gRPC state); each child builds its own grpc.aio server with
`grpc.so_reuseport` = 1 and the kernel spreads new connections over them.

Who may share the port. Linux lets a socket bind a port already bound with SO_REUSEPORT only
if the new socket also sets it (and belongs to the same user). The supervisor binds its
reservation socket WITHOUT SO_REUSEPORT first, so the bind fails if anything at all holds the
port (a single-process coordd, another supervisor, any program), and only then sets
SO_REUSEPORT on it, so its own children can join. The reservation is bound but never listens
(the kernel hands connections to listening sockets only) and is held for the supervisor's
whole life, also while a child restarts. Hence:
- a single-process `coordd serve` binds without SO_REUSEPORT: refused (address in use);
- a second supervisor's reservation binds without SO_REUSEPORT: refused before it starts any
  child;
- a child is only started by a supervisor, and checks the reservation socket it inherits is
  bound to the port it is told to serve (`verify_reservation`).

Children get a lifeline pipe: when the supervisor dies (even by SIGKILL) the pipe reads EOF
and the child drains as on SIGTERM, so no orphan keeps serving.

Metrics: the children record into a prometheus_client multiprocess directory owned by the
supervisor, which alone serves `metrics_port` with the aggregate (counters and histograms
summed over the children, also over restarted ones; gauges per live process with a `pid`
label, see coordd.metrics).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from coordd.config import Settings

log = structlog.get_logger("coordd.supervisor")

CRASH_LIMIT = 5  # this many unexpected child exits ...
CRASH_WINDOW_S = 60.0  # ... within this window: give up, exit 1
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 10.0
START_TIMEOUT_S = 120.0
_WILDCARDS = {"", "0.0.0.0", "::", "*"}


class SupervisorError(Exception):
    """A reason the supervisor cannot start, printed as one line."""


def process_count(requested: int) -> int:
    """`--processes 0`: one per core this process may run on."""
    if requested < 0:
        raise SupervisorError("--processes: expected 0 (one per core) or a positive number")
    if requested:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def reserve_port(listen: str) -> list[socket.socket]:
    """Binds every address `listen` resolves to (without SO_REUSEPORT: refused if anything
    holds the port), then sets SO_REUSEPORT so that the children, and only sockets that also
    set it, can bind next to it. Port 0 picks one free port for all addresses."""
    host, port = _split(listen)
    if host in _WILDCARDS:
        infos = [(socket.AF_INET6, ("::", port))] if socket.has_ipv6 else []
        infos.append((socket.AF_INET, ("0.0.0.0", port)))
    else:
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise SupervisorError(f"cannot listen on {listen}: {exc}") from None
        infos = list(dict.fromkeys((fam, sa[:2]) for fam, _, _, _, sa in found))
    held: list[socket.socket] = []
    try:
        for family, (address, _) in infos:
            sock = socket.socket(family, socket.SOCK_STREAM)
            if family == socket.AF_INET6:
                # The wildcard also covers IPv4 (as grpc's own wildcard listener does).
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if address == "::" else 1)
            try:
                sock.bind((address, port))
            except OSError as exc:
                sock.close()
                if host in _WILDCARDS and family == socket.AF_INET and held:
                    break  # the dual-stack IPv6 wildcard already holds the IPv4 side
                if host in _WILDCARDS and family == socket.AF_INET6 and exc.errno != errno.EADDRINUSE:
                    continue  # no IPv6 on this host
                raise SupervisorError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            port = sock.getsockname()[1]
            held.append(sock)
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held


def verify_reservation(fd: int, listen: str) -> None:
    """A child's check that the socket its supervisor handed it holds the port it serves."""
    _, port = _split(listen)
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise SupervisorError(f"not started by a coordd supervisor (fd {fd}: {exc})") from None
    try:
        bound = sock.getsockname()[1]
        reuse = sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    finally:
        sock.close()
    if bound != port or not reuse or listening:
        raise SupervisorError(f"the supervisor's reservation is not port {port}; refusing to share it")


def watch_lifeline(fd: int) -> None:
    """In a child: drain (SIGTERM to itself) when the supervisor's end of the pipe closes."""

    def wait() -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 1):
                pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="coordd-lifeline", daemon=True).start()


@dataclass
class Child:
    slot: int
    proc: subprocess.Popen[bytes] | None = None
    ready_file: Path = Path()
    restart_at: float = 0.0
    crashes: deque[float] = field(default_factory=deque)  # this slot's recent crash times


class Supervisor:
    def __init__(
        self, settings: Settings, processes: int, forward_args: list[str], port_file: str | None
    ) -> None:
        self.settings = settings
        self.count = process_count(processes)
        self.forward_args = forward_args
        self.port_file = port_file
        self.children = [Child(slot) for slot in range(self.count)]
        self.crashes: deque[float] = deque()
        self.signal_received: int | None = None
        self.port = 0
        self._reserved: list[socket.socket] = []
        self._workdir = Path()
        self._lifeline_r = self._lifeline_w = -1
        self._metrics_server: Any = None

    # -- children ---------------------------------------------------------------------------

    def _listen(self) -> str:
        host = self.settings.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    def _spawn(self, child: Child) -> None:
        child.ready_file = self._workdir / f"slot-{child.slot}.port"
        child.ready_file.unlink(missing_ok=True)
        reservation = self._reserved[0].fileno()
        cmd = [
            sys.executable,
            "-m",
            "coordd",
            "serve",
            *self.forward_args,
            "--listen",
            self._listen(),
            "--port-file",
            str(child.ready_file),
            "--child-slot",
            str(child.slot),
            "--child-reservation-fd",
            str(reservation),
            "--child-lifeline-fd",
            str(self._lifeline_r),
        ]
        env = dict(os.environ)
        env["COORDD_METRICS_PORT"] = "0"  # the supervisor serves the aggregate
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self._workdir / "metrics")
        child.proc = subprocess.Popen(cmd, env=env, pass_fds=(reservation, self._lifeline_r))
        log.info("child started", slot=child.slot, pid=child.proc.pid)

    def _reap(self, child: Child, code: int, now: float) -> None:
        assert child.proc is not None
        pid = child.proc.pid
        child.proc = None
        with contextlib.suppress(Exception):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, str(self._workdir / "metrics"))
        self.crashes.append(now)
        while self.crashes and self.crashes[0] < now - CRASH_WINDOW_S:
            self.crashes.popleft()
        child.crashes.append(now)
        while child.crashes and child.crashes[0] < now - CRASH_WINDOW_S:
            child.crashes.popleft()
        delay = min(BACKOFF_BASE_S * 2 ** (len(child.crashes) - 1), BACKOFF_MAX_S)
        child.restart_at = now + delay
        log.error("child exited; restarting", slot=child.slot, pid=pid, code=code, restart_in_s=delay)

    def _wait_ready(self) -> int | None:
        """Waits until every first child wrote its port file; returns an exit code when one
        exits first (a startup error it printed itself) or a signal arrives."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.signal_received is not None:
                return 0
            pending = 0
            for child in self.children:
                assert child.proc is not None
                code = child.proc.poll()
                if code is not None:
                    log.error("child failed to start", slot=child.slot, code=code)
                    return code or 1
                if not (child.ready_file.exists() and child.ready_file.read_text().strip()):
                    pending += 1
            if not pending:
                return None
            time.sleep(0.05)
        log.error("children did not start in time", timeout_s=START_TIMEOUT_S)
        return 1

    def _monitor(self) -> int:
        while self.signal_received is None:
            now = time.monotonic()
            for child in self.children:
                if child.proc is None:
                    if now >= child.restart_at:
                        self._spawn(child)
                    continue
                code = child.proc.poll()
                if code is None:
                    continue
                self._reap(child, code, now)
                if len(self.crashes) >= CRASH_LIMIT:
                    log.error(
                        "children keep crashing; giving up",
                        crashes=len(self.crashes),
                        window_s=CRASH_WINDOW_S,
                    )
                    return 1
            time.sleep(0.1)
        return 0

    def _stop_children(self, sig: int) -> bool:
        """Forwards `sig` to every child and waits for them to drain; True if all exit 0."""
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(sig)
        deadline = time.monotonic() + self.settings.shutdown_grace_s + 15
        clean = True
        for child in self.children:
            if child.proc is None:
                continue
            try:
                code = child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("child did not drain in time; killing it", slot=child.slot, pid=child.proc.pid)
                child.proc.kill()
                code = child.proc.wait()
            clean = clean and code == 0
        return clean

    # -- the run ----------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            for child in self.children:  # TLS reload, each child re-reads its files
                if child.proc is not None:
                    with contextlib.suppress(ProcessLookupError):
                        child.proc.send_signal(signal.SIGHUP)
            return
        self.signal_received = signum

    def _serve_metrics(self) -> None:
        s = self.settings
        if not s.metrics_port:
            return
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self._workdir / "metrics"))
        try:
            self._metrics_server, _ = start_http_server(
                s.metrics_port, addr=s.metrics_host, registry=registry
            )
        except OSError as exc:
            raise SupervisorError(
                f"cannot serve metrics on {s.metrics_host}:{s.metrics_port}: {exc}"
            ) from None

    def run(self) -> int:
        if self.settings.backend != "postgresql":
            raise SupervisorError(
                "--processes needs PostgreSQL (set database_url): a SQLite file is served by one process"
            )
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        self._reserved = reserve_port(self.settings.listen)
        self.port = self._reserved[0].getsockname()[1]
        self._workdir = Path(tempfile.mkdtemp(prefix="coordd-supervisor-"))
        (self._workdir / "metrics").mkdir()
        self._lifeline_r, self._lifeline_w = os.pipe()
        try:
            self._serve_metrics()
            for child in self.children:
                self._spawn(child)
            code = self._wait_ready()
            if code is None:
                if self.port_file:
                    with open(self.port_file, "w") as fh:
                        fh.write(str(self.port))
                log.info("coordd supervisor serving", listen=self._listen(), processes=self.count)
                code = self._monitor()
            sig = self.signal_received or signal.SIGTERM
            log.info("stopping children", signal=signal.Signals(sig).name)
            clean = self._stop_children(sig)
            log.info("supervisor stopped", clean=clean)
            return code or (0 if clean else 1)
        finally:
            self._close()

    def _close(self) -> None:
        for sock in self._reserved:
            sock.close()
        for fd in (self._lifeline_r, self._lifeline_w):
            if fd >= 0:
                os.close(fd)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        shutil.rmtree(self._workdir, ignore_errors=True)
