"""Running a verifier on an uploaded contribution, off the event loop and within a time limit.

The built-in verifier checks the declared size and BLAKE2b-512. An external command (set
by an admin) runs after that check, without a shell, with placeholders substituted per
argument; exit status 0 means valid. A verifier that overruns its limit is killed and the
contribution is invalid, so verification never holds a circuit's queue forever.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordd.blobs.store import BlobStore
from coordd.domain.ceremony.names import listed

PLACEHOLDERS = ("r1cs", "ptau", "zkey", "previous", "circuit")


class VerifierStopped(Exception):
    """The daemon is shutting down: no verdict; the contribution is verified again later."""


MAX_OUTPUT_CHARS = 4000


@dataclass(frozen=True)
class VerifyJob:
    contribution_id: str
    blob_key: str
    size: int
    hash: str
    command: str
    timeout_s: float
    # Blob keys of the artifacts and of the last valid contribution ("" when absent).
    r1cs_key: str
    ptau_key: str
    previous_key: str
    circuit_name: str
    # Why this contribution cannot be verified here (its verifier is not declared), or "".
    unavailable: str = ""


@dataclass(frozen=True)
class VerifyResult:
    valid: bool
    output: str
    seconds: float
    # The upload itself was damaged (size or digest mismatch): the contributor may retry.
    transport_fault: bool = False
    # What snarkjs printed as the contribution hash (its 64 bytes in hex), when it did.
    contribution_hash: str = ""


# snarkjs prints the contributions it checked as "contribution #N NAME:" followed by the
# 64-byte hash in four lines of four 8-hex-digit groups.
_CONTRIBUTION_RE = re.compile(
    r"contribution #(\d+)[^\n]*:\s*\n((?:[^\n]*?(?:[0-9a-f]{8}\s+){3}[0-9a-f]{8}\s*\n?){4})",
    re.IGNORECASE,
)
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


def contribution_hash(output: str) -> str:
    """The hash of the newest contribution (the highest #) snarkjs listed in `zkey verify`
    output (it lists them newest first), or ""."""
    text = _ANSI_RE.sub("", output)
    listed = [int(n) for n in re.findall(r"contribution #(\d+)", text, re.IGNORECASE)]
    if not listed:
        return ""
    for match in _CONTRIBUTION_RE.finditer(text):
        groups = re.findall(r"[0-9a-fA-F]{8}", match.group(2))
        if int(match.group(1)) == max(listed) and len(groups) == 16:
            return "".join(groups).lower()
    # The newest entry is printed otherwise (a beacon's, say): better no hash than another's.
    return ""


def check_command(command: str) -> str | None:
    """A problem with a verifier command, or None when it can run."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return f"cannot be parsed: {exc}"
    if not argv:
        return "is empty"
    for arg in argv:
        try:
            arg.format(**{name: "" for name in PLACEHOLDERS})
        except (KeyError, IndexError, ValueError):
            return f"argument {arg!r} uses an unknown placeholder (known: {listed(PLACEHOLDERS)})"
    return None


def _trim(text: str) -> str:
    text = text.strip()
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    half = MAX_OUTPUT_CHARS // 2
    return f"{text[:half]}\n...\n{text[-half:]}"


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class Processes:
    """The verifier processes one runner started, so a shutdown kills exactly those."""

    def __init__(self) -> None:
        self._running: set[subprocess.Popen[bytes]] = set()
        self._stopped: set[int] = set()
        self._closed = False
        self._lock = threading.Lock()

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._running.add(proc)
            closed = self._closed
            if closed:
                self._stopped.add(proc.pid)
        if closed:
            _kill(proc)

    def discard(self, proc: subprocess.Popen[bytes]) -> bool:
        """Forgets `proc`; True when it was killed by `kill_all`."""
        with self._lock:
            self._running.discard(proc)
            stopped = proc.pid in self._stopped
            self._stopped.discard(proc.pid)
            return stopped

    def kill_all(self) -> None:
        """Daemon shutdown: worker threads return at once, and the contributions stay
        VERIFYING, to be verified again after the restart. Processes started later die too."""
        with self._lock:
            self._closed = True
            running = list(self._running)
            self._stopped.update(proc.pid for proc in running)
        for proc in running:
            _kill(proc)


def _wait(
    proc: subprocess.Popen[bytes],
    timeout_s: float,
    heartbeat: Callable[[], object] | None,
    heartbeat_s: float,
) -> tuple[bytes, bytes] | None:
    """Output of `proc`, or None when it overran `timeout_s`; `heartbeat` runs in between."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            return proc.communicate(timeout=min(left, heartbeat_s) if heartbeat else left)
        except subprocess.TimeoutExpired:
            if heartbeat is not None:
                with contextlib.suppress(Exception):  # a missed renewal only shortens the lease
                    heartbeat()


def run(
    blobs: BlobStore,
    job: VerifyJob,
    *,
    procs: Processes | None = None,
    heartbeat: Callable[[], object] | None = None,
    heartbeat_s: float = 2.0,
) -> VerifyResult:
    """Blocking: call from a worker thread. `heartbeat` is called every `heartbeat_s` while
    an external verifier runs (the runner renews its lease there)."""
    procs = procs or Processes()
    started = time.monotonic()

    def done(valid: bool, output: str, **extra: Any) -> VerifyResult:
        return VerifyResult(valid, _trim(output), time.monotonic() - started, **extra)

    try:
        size, digest = blobs.digest(job.blob_key)
    except FileNotFoundError:
        return done(False, "the uploaded file is missing", transport_fault=True)
    if size != job.size:
        return done(False, f"size {size} does not match the declared {job.size} bytes", transport_fault=True)
    if digest != job.hash:
        return done(
            False, "BLAKE2b-512 of the uploaded file does not match the declared hash", transport_fault=True
        )
    if heartbeat is not None:
        heartbeat()
    if job.unavailable:
        return done(False, f"cannot verify: {job.unavailable}")
    if not job.command:
        return done(True, "built-in verifier: size and BLAKE2b-512 match")
    paths = {
        "zkey": str(blobs.path(job.blob_key)),
        "r1cs": str(blobs.path(job.r1cs_key)) if job.r1cs_key else "",
        "ptau": str(blobs.path(job.ptau_key)) if job.ptau_key else "",
        "previous": str(blobs.path(job.previous_key)) if job.previous_key else "",
        "circuit": job.circuit_name,
    }
    argv = shlex.split(job.command)
    for name in ("r1cs", "ptau", "previous"):
        if any("{" + name + "}" in arg for arg in argv) and not paths[name]:
            return done(False, f"cannot verify: the circuit has no {name} file")
    argv = [arg.format(**paths) for arg in argv]
    try:
        # Its own process group, so a time limit or shutdown kills the whole tree (a shell
        # wrapper's children too), and nothing keeps the output pipes open afterwards.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=Path(paths["zkey"]).parent,
            env={**os.environ, "NO_COLOR": "1"},
            start_new_session=True,
        )
    except OSError as exc:
        return done(False, f"the verifier could not run: {exc}")
    procs.add(proc)
    try:
        out = _wait(proc, job.timeout_s, heartbeat, heartbeat_s)
        if out is None:
            _kill(proc)
            proc.communicate()
    finally:
        stopped = procs.discard(proc)
    if stopped:
        raise VerifierStopped("the verifier was stopped: the daemon is shutting down")
    if out is None:
        return done(False, f"the verifier did not finish within {job.timeout_s:g} s")
    stdout, stderr = out
    output = (stdout + stderr).decode(errors="replace")
    if proc.returncode != 0:
        return done(False, f"exit status {proc.returncode}\n{output}")
    return done(True, output, contribution_hash=contribution_hash(output))
