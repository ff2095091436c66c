"""The data dir is the daemon user's alone: 0700, database files and keys 0600."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.support.server import ServerHandle


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_fresh_data_dir_is_0700_and_everything_in_it_0600(server):
    server.sign_up()  # writes: the WAL and shared-memory files exist while connections are open
    data = Path(server.settings.data_dir)
    assert _mode(data) == 0o700
    for key in ("jwt.secret", "coordinator.key", "secrets.key"):
        assert _mode(data / key) == 0o600, key
    if server.settings.backend == "sqlite":
        for name in ("coordd.db", "coordd.db-wal", "coordd.db-shm", "coordd.db.lock"):
            assert _mode(data / name) == 0o600, name


def test_an_existing_data_dir_and_database_open_to_others_are_tightened(tmp_path, settings_factory, clock):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    for name in ("coordd.db", "coordd.db-wal"):
        (data / name).touch()
        os.chmod(data / name, 0o644)
    server = ServerHandle(settings_factory(), clock)
    try:
        assert _mode(data) == 0o700
        if server.settings.backend == "sqlite":
            assert _mode(data / "coordd.db") == 0o600
            assert _mode(data / "coordd.db-wal") == 0o600
    finally:
        server.stop()


def test_the_cli_creates_the_data_dir_private(tmp_path):
    data = tmp_path / "nested" / "data"
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-m", "coordd", "migrate", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert _mode(data) == 0o700
    assert _mode(data / "coordd.db") == 0o600
    assert all(_mode(p) & 0o077 == 0 for p in data.iterdir())
