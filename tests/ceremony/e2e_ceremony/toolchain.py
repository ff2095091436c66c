"""snarkjs and circom2 for the end-to-end ceremony test, installed from npm into a cache
directory under the repository (`.cache/npm-ceremony`, git-ignored) on first use.

Without node/npm the test skips with the reason, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CACHE = ROOT / ".cache" / "npm-ceremony"
PACKAGES = ("snarkjs", "circom2")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Toolchain:
    snarkjs: Path
    circom2: Path

    def run(self, tool: Path, *args: str | Path, cwd: Path, timeout: float = 120) -> str:
        proc = subprocess.run(
            [str(tool), *map(str, args)],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"{tool.name} {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc.stdout


def require_toolchain() -> Toolchain:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        reason = (
            f"the end-to-end ceremony test needs {' and '.join(missing)} on PATH (for snarkjs and circom2)"
        )
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: this test must run)")
        pytest.skip(reason)
    bins = CACHE / "node_modules" / ".bin"
    if not all((bins / name).exists() for name in PACKAGES):
        CACHE.mkdir(parents=True, exist_ok=True)
        if not (CACHE / "package.json").exists():
            (CACHE / "package.json").write_text('{"name": "coordd-ceremony-e2e", "private": true}\n')
        proc = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", *PACKAGES],
            cwd=CACHE,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(f"npm install {' '.join(PACKAGES)} failed:\n{proc.stdout}\n{proc.stderr}")
    return Toolchain(snarkjs=bins / "snarkjs", circom2=bins / "circom2")


@dataclass(frozen=True)
class Artifacts:
    r1cs: Path
    ptau: Path
    genesis: Path


def build_artifacts(tools: Toolchain, work: Path) -> Artifacts:
    """Compiles the circuit, makes a small powers of tau (2^4) and the genesis zkey."""
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).parent / "multiplier.circom", work / "multiplier.circom")
    tools.run(tools.circom2, "multiplier.circom", "--r1cs", "-o", ".", cwd=work)
    tools.run(tools.snarkjs, "powersoftau", "new", "bn128", "4", "pot_0000.ptau", cwd=work)
    tools.run(
        tools.snarkjs,
        "powersoftau",
        "contribute",
        "pot_0000.ptau",
        "pot_0001.ptau",
        "--name=e2e",
        "-e=phase1 entropy",
        cwd=work,
    )
    tools.run(tools.snarkjs, "powersoftau", "prepare", "phase2", "pot_0001.ptau", "pot_final.ptau", cwd=work)
    tools.run(
        tools.snarkjs, "zkey", "new", "multiplier.r1cs", "pot_final.ptau", "multiplier_0000.zkey", cwd=work
    )
    return Artifacts(work / "multiplier.r1cs", work / "pot_final.ptau", work / "multiplier_0000.zkey")
