"""Key files in the data dir (JWT secret, signing key, sealing key): created once, complete,
private, and the same for every replica that shares the directory."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

from coordd.crypto.secrets import load_or_create


def _load(path: str, queue: Any, start: Any) -> None:
    start.wait(30)  # every process is up: they race from here
    queue.put(load_or_create(Path(path)))


def test_replicas_starting_together_all_get_the_same_complete_key(tmp_path):
    """Processes racing to create the key: one wins, every other reads the winner's key, and
    none ever reads a file still being written."""
    path = tmp_path / "keys" / "secrets.key"
    # spawn, not fork: a fork of this process (gRPC's threads running) crashed in its exit's
    # garbage collection now and then, after doing its work.
    spawn = multiprocessing.get_context("spawn")
    queue, start = spawn.Queue(), spawn.Barrier(8)
    workers = [spawn.Process(target=_load, args=(str(path), queue, start)) for _ in range(8)]
    for worker in workers:
        worker.start()
    keys = [queue.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(30)
    assert [worker.exitcode for worker in workers] == [0] * len(workers)
    assert len(set(keys)) == 1 and len(keys[0]) == 32
    assert path.read_bytes() == keys[0]
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["secrets.key"], "no temporary files left"


def test_an_existing_key_is_kept_and_a_readable_one_is_refused(tmp_path):
    path = tmp_path / "jwt.secret"
    first = load_or_create(path)
    assert load_or_create(path, b"something else") == first
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create(path)
