"""bench/before_after.py: its command line (the benches themselves are run by hand, never timed in tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "before_after.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_before_after_help_names_every_option():
    shown = _run("--help")
    assert shown.returncode == 0
    for option in ("--before", "--after", "--only", "--repeat", "--args", "--scripts"):
        assert option in shown.stdout


def test_before_after_refuses_an_unknown_bench_before_checking_anything_out():
    refused = _run("--before", "HEAD", "--after", "HEAD", "--only", "unary,nonesuch")
    assert refused.returncode == 2
    assert "unknown bench nonesuch" in refused.stderr
