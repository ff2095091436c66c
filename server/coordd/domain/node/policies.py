"""What a project, node and workload may look like: the policy and inventory values and
their validation (bad input is reported field by field, before any transaction)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from coordd.core.errors import Violations

SLUG_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")
MAX_LABELS = 32


@dataclass
class HealthPolicy:
    interval_s: float = 10.0
    misses: int = 2
    grace_s: float = 10.0
    successes_before_up: int = 2
    # A mass outage: at least this share of at least this many watched nodes going silent
    # within one detection window (a small project's outage is its nodes', not ours).
    mass_outage_share: float = 0.5
    mass_outage_min_nodes: int = 10


@dataclass
class RewardPolicy:
    points_per_up_hour: int = 10
    cap_per_day: int = 200


@dataclass
class Inventory:
    cpu_cores: int = 0
    memory_mb: int = 0
    disk_gb: int = 0
    gpus: list[dict[str, Any]] | None = None


@dataclass
class Resources:
    cpu_millis: int = 0
    memory_mb: int = 0
    disk_gb: int = 0
    gpu_count: int = 0
    gpu_model: str = ""


def check_name(v: Violations, value: str, path: str) -> None:
    if not value:
        v.add(path, "required")
    elif len(value) > 100:
        v.add(path, "at most 100 characters")
    elif value != value.strip():
        v.add(path, "must not start or end with white space")


def check_labels(v: Violations, labels: dict[str, str], path: str) -> None:
    if len(labels) > MAX_LABELS:
        v.add(path, f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not LABEL_KEY_RE.match(key):
            v.add(f"{path}[{key}]", "keys: letters, digits, . _ / -, at most 63 characters")
        elif len(value) > 255:
            v.add(f"{path}[{key}]", "values: at most 255 characters")


def check_health_policy(v: Violations, p: HealthPolicy, path: str = "health_policy") -> None:
    if not 0.1 <= p.interval_s <= 3600:
        v.add(f"{path}.heartbeat_interval", "between 0.1 s and 1 hour")
    if not 1 <= p.misses <= 100:
        v.add(f"{path}.misses", "between 1 and 100")
    if not 0 <= p.grace_s <= 3600:
        v.add(f"{path}.grace", "between 0 and 1 hour")
    if not 1 <= p.successes_before_up <= 100:
        v.add(f"{path}.successes_before_up", "between 1 and 100")
    if not 0 < p.mass_outage_share <= 1:
        v.add(f"{path}.mass_outage_share", "greater than 0, at most 1")
    if not 1 <= p.mass_outage_min_nodes <= 1_000_000:
        v.add(f"{path}.mass_outage_min_nodes", "between 1 and 1000000")


def check_reward_policy(v: Violations, p: RewardPolicy, path: str = "reward_policy") -> None:
    if not 0 <= p.points_per_up_hour <= 1_000_000:
        v.add(f"{path}.points_per_up_hour", "between 0 and 1000000")
    if not 0 <= p.cap_per_day <= 1_000_000_000:
        v.add(f"{path}.cap_per_day", "between 0 and 1000000000")


def check_inventory(v: Violations, inv: Inventory, path: str = "inventory") -> None:
    if not 0 <= inv.cpu_cores <= 100_000:
        v.add(f"{path}.cpu_cores", "between 0 and 100000")
    if not 0 <= inv.memory_mb <= 10**9:
        v.add(f"{path}.memory_mb", "between 0 and 10^9")
    if not 0 <= inv.disk_gb <= 10**9:
        v.add(f"{path}.disk_gb", "between 0 and 10^9")
    for index, gpu in enumerate(inv.gpus or []):
        if not gpu.get("model") or len(gpu["model"]) > 100:
            v.add(f"{path}.gpus[{index}].model", "required, at most 100 characters")
        if not 1 <= int(gpu.get("count", 0)) <= 1024:
            v.add(f"{path}.gpus[{index}].count", "between 1 and 1024")


def check_resources(v: Violations, r: Resources, path: str = "resources") -> None:
    for name, limit in (("cpu_millis", 10**8), ("memory_mb", 10**9), ("disk_gb", 10**9), ("gpu_count", 1024)):
        if not 0 <= getattr(r, name) <= limit:
            v.add(f"{path}.{name}", f"between 0 and {limit}")
    if len(r.gpu_model) > 100:
        v.add(f"{path}.gpu_model", "at most 100 characters")


def check_workload(
    v: Violations,
    display_name: str | None,
    spec: str | None,
    replicas: int | None,
    resources: Resources | None,
    labels: dict[str, str] | None,
    prefix: str = "",
) -> None:
    if display_name is not None:
        check_name(v, display_name, f"{prefix}display_name")
    if spec is not None and (not spec or len(spec) > 8000):
        v.add(f"{prefix}spec", "required, at most 8000 characters")
    if replicas is not None and not 0 <= replicas <= 1000:
        v.add(f"{prefix}replicas", "between 0 and 1000")
    if resources is not None:
        check_resources(v, resources, f"{prefix}resources")
    if labels is not None:
        check_labels(v, labels, f"{prefix}placement_labels")


@dataclass
class MonitoringPolicy:
    """A project's flapping, escalation and repeat rules (issue 14)."""

    # FLAPPING: more than `flap_changes` UP/DOWN changes within `flap_window_s`; it
    # settles after `flap_settle_s` without a change. One notice each way, none between.
    flap_changes: int = 5
    flap_window_s: float = 600.0
    flap_settle_s: float = 300.0
    # A DOWN incident not acknowledged `escalate_after_s` after it was notified is sent to
    # `escalation_channel` too (0 / "": no escalation).
    escalate_after_s: float = 0.0
    escalation_channel: str = ""
    # While a DOWN incident is open and not acknowledged, a reminder every so often (0: none).
    repeat_every_s: float = 0.0


def check_monitoring_policy(v: Violations, p: MonitoringPolicy, path: str = "monitoring_policy") -> None:
    if not 1 <= p.flap_changes <= 1000:
        v.add(f"{path}.flap_changes", "between 1 and 1000")
    if not 10 <= p.flap_window_s <= 7 * 86400:
        v.add(f"{path}.flap_window", "between 10 s and 7 days")
    if not 1 <= p.flap_settle_s <= 7 * 86400:
        v.add(f"{path}.flap_settle", "between 1 s and 7 days")
    if not (p.escalate_after_s == 0 or 10 <= p.escalate_after_s <= 7 * 86400):
        v.add(f"{path}.escalate_after", "0 (off) or between 10 s and 7 days")
    if p.escalate_after_s and not p.escalation_channel:
        v.add(f"{path}.escalation_channel", "required when escalate_after is set")
    if not (p.repeat_every_s == 0 or 60 <= p.repeat_every_s <= 7 * 86400):
        v.add(f"{path}.repeat_every", "0 (off) or between 1 minute and 7 days")
