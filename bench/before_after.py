"""Every bench of `make bench`, before and after a change, side by side in one run.

Checks out the two revisions into temporary git worktrees (under /tmp, removed at the end), then
runs each bench alternately on the before and the after tree (--repeat N pairs, 3 by default,
the order flipped every pair so neither side always runs on a warmer machine), each with short
explicit arguments: the whole run takes about ten minutes on a 2-core machine (one pair of
every bench: ~3.5 min). Every run
uses this interpreter (the shared venv) with PYTHONPATH=<tree>/server:<tree>/clients, so the
daemon a bench starts is that tree's code. An option one tree's bench does not know is left
out of both runs (listed under `dropped_args`), so the two sides always run the same workload.

Prints one JSON document: for each bench, its headline figures (picked from the bench's own
JSON output) before and after (the median over the repeats), the ratio after/before, the load
average around every run, and each run's full output.

    .venv/bin/python bench/before_after.py --before main --after HEAD [--only unary,jobs] [--repeat 3]
        [--args "unary=--seconds 5 --concurrency 32"] [--scripts REV]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# bench -> (arguments, headline figures: a regex over the dotted paths of its JSON numbers).
BENCHES: dict[str, tuple[list[str], str]] = {
    "unary": (["--seconds", "3", "--concurrency", "32"], r"(\.rps|_ms|cpu_us_per_call|^ratio_.*)$"),
    "jobs": (
        ["--jobs", "2000", "--workers", "4", "--backends", "postgresql"],
        r"(jobs_per_s|start_p99_ms|double_claims|completion_errors|^ratio_.*)$",
    ),
    "register": (
        ["--registrations", "600", "--backends", "sqlite,postgresql"],
        r"(registrations_per_s|\.p99_ms|oversold|ratio_.*)$",
    ),
    "heartbeats": (
        ["--nodes", "100", "--seconds", "2", "--concurrency", "32"],
        r"(beats_per_s|\.p99_ms|write_p99_ms|detection\.(p50_s|max_s)|^ratio_.*)$",
    ),
    "queue_watch": (
        ["--watchers", "500", "--rounds", "2"],
        r"(update_latency\.(p50_ms|p99_ms)|kib_per_stream|daemon_cpu_us_per_update|^ratio_.*)$",
    ),
}


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout


def flatten(value: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a JSON document by dotted path (lists are skipped: per-round detail)."""
    out: dict[str, float] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
    elif isinstance(value, int | float) and not isinstance(value, bool):
        out[prefix.rstrip(".")] = value
    return out


def known_options(tree: Path, bench: str, scripts: Path) -> set[str]:
    text = subprocess.run(
        [sys.executable, str(scripts / f"{bench}.py"), "--help"],
        cwd=tree,
        env=env_for(tree),
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", text))


def common_args(args: list[str], known: set[str]) -> tuple[list[str], list[str]]:
    """`args` without the options (and their values) outside `known`; and those left out."""
    kept: list[str] = []
    dropped: list[str] = []
    i = 0
    while i < len(args):
        option = args[i]
        has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
        group = args[i : i + 2] if has_value else args[i : i + 1]
        (kept if option in known else dropped).extend(group)
        i += len(group)
    return kept, dropped


def env_for(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORDD_")}
    env["PYTHONPATH"] = f"{tree / 'server'}:{tree / 'clients'}"
    return env


def run_once(tree: Path, bench: str, scripts: Path, args: list[str], timeout_s: float) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, str(scripts / f"{bench}.py"), *args],
            cwd=tree,
            env=env_for(tree),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:g} s", "loadavg_1m": [load_before, os.getloadavg()[0]]}
    run: dict[str, Any] = {
        "seconds": round(time.monotonic() - started, 1),
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    start = proc.stdout.find("{")
    try:
        run["output"] = json.loads(proc.stdout[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        run["output"] = None
    if proc.returncode != 0 or run["output"] is None:
        run["error"] = f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"
    return run


def headline(runs: list[dict[str, Any]], pattern: str) -> dict[str, float]:
    """The median of each headline figure over the runs that produced it."""
    values: dict[str, list[float]] = {}
    for run in runs:
        for path, value in flatten(run.get("output") or {}).items():
            if re.search(pattern, path):
                values.setdefault(path, []).append(value)
    return {path: round(statistics.median(v), 3) for path, v in values.items()}


def compare(before: dict[str, float], after: dict[str, float]) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for path in sorted(before.keys() | after.keys()):
        b, a = before.get(path), after.get(path)
        ratio = round(a / b, 3) if a is not None and b else None
        table[path] = {"before": b, "after": a, "after_over_before": ratio}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision (branch, tag, commit)")
    parser.add_argument("--after", required=True, help="git revision")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {','.join(BENCHES)}")
    parser.add_argument(
        "--repeat", type=int, default=3, help="before/after pairs per bench (3: about ten minutes in all)"
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds per bench run")
    parser.add_argument(
        "--args",
        action="append",
        default=[],
        metavar="BENCH=ARGS",
        help='replaces a bench\'s arguments, e.g. --args "unary=--seconds 5 --concurrency 32"',
    )
    parser.add_argument(
        "--scripts",
        default="",
        metavar="REV",
        help="both sides run the bench/ scripts of this revision (the same client workload "
        "against both daemons); default: each tree runs its own",
    )
    opts = parser.parse_args()
    names = [n for n in opts.only.split(",") if n] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown bench {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    overrides: dict[str, list[str]] = {}
    for item in opts.args:
        bench, sep, text = item.partition("=")
        if not sep or bench not in BENCHES:
            parser.error(f"--args {item!r}: expected BENCH=ARGS with BENCH one of {', '.join(BENCHES)}")
        overrides[bench] = text.split()
    if opts.repeat < 1:
        parser.error("--repeat must be at least 1")
    asked = {"before": opts.before, "after": opts.after}
    revs = {side: git("rev-parse", "--verify", f"{rev}^{{commit}}").strip() for side, rev in asked.items()}
    base = Path(tempfile.mkdtemp(prefix="coordd-before-after-"))
    if opts.scripts:
        revs["scripts"] = git("rev-parse", "--verify", f"{opts.scripts}^{{commit}}").strip()
    trees = {side: base / side for side in revs}
    out: dict[str, Any] = {
        "benchmark": "before_after",
        "before": {"rev": opts.before, "commit": revs["before"]},
        "after": {"rev": opts.after, "commit": revs["after"]},
        "cpus": os.cpu_count(),
        "repeat": opts.repeat,
        "scripts": {"rev": opts.scripts, "commit": revs.get("scripts")} if opts.scripts else "own",
        "benches": {},
    }
    try:
        for side, tree in trees.items():
            git("worktree", "add", "--detach", str(tree), revs[side])
        for name in names:
            wanted, pattern = BENCHES[name]
            wanted = overrides.get(name, wanted)
            scripts = {side: trees["scripts" if opts.scripts else side] / "bench" for side in asked}
            known = known_options(trees["before"], name, scripts["before"]) & known_options(
                trees["after"], name, scripts["after"]
            )
            args, dropped = common_args(wanted, known)
            runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
            for pair in range(opts.repeat):
                order = ("before", "after") if pair % 2 == 0 else ("after", "before")
                for side in order:
                    print(f"[before_after] {name} {side} ({pair + 1}/{opts.repeat})", file=sys.stderr)
                    runs[side].append(run_once(trees[side], name, scripts[side], args, opts.timeout))
            out["benches"][name] = {
                "args": args,
                "dropped_args": dropped,
                "headline": compare(headline(runs["before"], pattern), headline(runs["after"], pattern)),
                "loadavg_1m": {side: [r["loadavg_1m"] for r in rs] for side, rs in runs.items()},
                "errors": {side: [r["error"] for r in rs if "error" in r] for side, rs in runs.items()},
                "runs": runs,
            }
    finally:
        for tree in trees.values():
            if tree.exists():
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
                )
        git("worktree", "prune")
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
