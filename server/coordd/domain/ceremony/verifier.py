"""Running a verifier on an uploaded contribution, off the event loop and within a time limit.

The built-in verifier checks the declared size and BLAKE2b-512. An external command (set
by an admin) runs after that check, without a shell, with placeholders substituted per
argument; exit status 0 means valid. A verifier that overruns its limit is killed and the
contribution is invalid, so verification never holds a circuit's queue forever.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from coordd.blobs.store import BlobStore
from coordd.domain.ceremony.names import listed

PLACEHOLDERS = ("r1cs", "ptau", "zkey", "previous", "circuit")
_running: set[subprocess.Popen[bytes]] = set()
_stopped: set[int] = set()
_lock = threading.Lock()


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


@dataclass(frozen=True)
class VerifyResult:
    valid: bool
    output: str
    seconds: float


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


def stop_all() -> None:
    """Kills every running verifier (daemon shutdown): worker threads return at once, and the
    contributions stay VERIFYING, to be verified again after the restart."""
    with _lock:
        running = list(_running)
        _stopped.update(proc.pid for proc in running)
    for proc in running:
        _kill(proc)


def run(blobs: BlobStore, job: VerifyJob) -> VerifyResult:
    """Blocking: call from a worker thread."""
    started = time.monotonic()

    def done(valid: bool, output: str) -> VerifyResult:
        return VerifyResult(valid, _trim(output), time.monotonic() - started)

    try:
        size, digest = blobs.digest(job.blob_key)
    except FileNotFoundError:
        return done(False, "the uploaded file is missing")
    if size != job.size:
        return done(False, f"size {size} does not match the declared {job.size} bytes")
    if digest != job.hash:
        return done(False, "BLAKE2b-512 of the uploaded file does not match the declared hash")
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
    with _lock:
        _running.add(proc)
    try:
        stdout, stderr = proc.communicate(timeout=job.timeout_s)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.communicate()
        return done(False, f"the verifier did not finish within {job.timeout_s:g} s")
    finally:
        with _lock:
            _running.discard(proc)
            stopped = proc.pid in _stopped
            _stopped.discard(proc.pid)
    if stopped:
        raise VerifierStopped("the verifier was stopped: the daemon is shutting down")
    output = (stdout + stderr).decode(errors="replace")
    if proc.returncode != 0:
        return done(False, f"exit status {proc.returncode}\n{output}")
    return done(True, output)
