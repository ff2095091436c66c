"""The verifiers an operator declares (name, command template, time limit) for coordinators to
choose by name, and how a ceremony's choice is resolved.

- "snarkjs" is declared out of the box when snarkjs is found (`snarkjs_path`, or on PATH):
  `snarkjs zkey verify {r1cs} {ptau} {zkey}`, which also prints the contribution hashes.
- "none" is the size-and-BLAKE2b-512 check alone: it must be chosen explicitly, and the
  ceremony and its transcript are marked unverified.
- A ceremony that names no verifier gets the daemon's default (`ceremony_default_verifier`);
  when that is not declared, creating it is refused rather than silently unverified.
- An admin may still give a raw command (it runs on the daemon's host).
"""

from __future__ import annotations

import shlex
import shutil
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

from coordd.core.errors import FailedPrecondition, InvalidArgument, Violations
from coordd.domain.ceremony.names import listed
from coordd.domain.ceremony.verifier import check_command
from coordd.runtime import Runtime

NONE = "none"
SNARKJS = "snarkjs"
# What a contribution's verifier is called when an admin's raw command checked it.
COMMAND = "command"


@dataclass(frozen=True)
class Declared:
    name: str
    command: str
    timeout_s: float


_cache: weakref.WeakKeyDictionary[Runtime, dict[str, Declared]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _snarkjs(path_setting: str) -> str | None:
    if path_setting.strip().lower() == "off":
        return None
    if path_setting:
        path = Path(path_setting)
        return str(path) if path.is_file() else None
    return shutil.which("snarkjs")


def declared(rt: Runtime) -> dict[str, Declared]:
    """Every verifier this daemon declares, by name (read once from the settings)."""
    with _lock:
        found = _cache.get(rt)
        if found is not None:
            return found
    s = rt.settings
    found = {}
    snarkjs = _snarkjs(s.snarkjs_path)
    if snarkjs is not None:
        command = f"{shlex.quote(snarkjs)} zkey verify {{r1cs}} {{ptau}} {{zkey}}"
        found[SNARKJS] = Declared(SNARKJS, command, s.snarkjs_verify_timeout_s)
    for name, spec in sorted(s.ceremony_verifiers.items()):
        problem = check_command(spec["command"])
        if problem:
            raise ValueError(f"config ceremony_verifiers.{name}: the command {problem}")
        found[name] = Declared(name, spec["command"], float(spec.get("timeout_s", 600)))
    with _lock:
        _cache[rt] = found
    return found


def names(rt: Runtime) -> list[str]:
    return [*declared(rt), NONE]


def resolve(rt: Runtime, name: str, command: str) -> tuple[str, float | None]:
    """The verifier name a ceremony records for a request's `name` and `command`, and the
    time limit it then has (None: the request's own, for a raw command or "none")."""
    if name and command:
        v = Violations()
        v.add("verifier.name", "give a verifier's name or a command, not both")
        v.raise_if_any()
    if command:
        return "", None
    if name == NONE:
        return NONE, None
    chosen = name or rt.settings.ceremony_default_verifier
    found = declared(rt).get(chosen)
    if found is not None:
        return found.name, found.timeout_s
    if name:
        raise InvalidArgument(
            f"no verifier {name!r} is declared on this daemon (declared: {listed(names(rt))})",
            reason="UNKNOWN_VERIFIER",
            metadata={"declared": ",".join(names(rt))},
        )
    raise FailedPrecondition(
        f"this daemon declares no {chosen!r} verifier, the default: choose one of "
        f"{listed(names(rt))} (verifier 'none' accepts any bytes of the declared size and hash, "
        "and marks the ceremony unverified)",
        reason="NO_VERIFIER",
        metadata={"declared": ",".join(names(rt))},
    )


def unverified(verifier_name: str, command: str) -> bool:
    """Whether contributions are checked for size and hash only (nothing about the proof)."""
    return verifier_name == NONE or (not verifier_name and not command)


def label(verifier_name: str, command: str) -> str:
    """The verifier as a contribution records it."""
    if verifier_name:
        return verifier_name
    return COMMAND if command else NONE
