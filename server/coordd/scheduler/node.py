"""Scheduler tasks of the node domain. Each selects what is due through an indexed column."""

from __future__ import annotations

from coordd.adapters import heartbeats
from coordd.domain.node import credit_rewards, place_all, run_escalations, run_silences, settle_flapping
from coordd.scheduler.core import Task

__all__ = ["place_all", "tasks"]


def tasks() -> list[Task]:
    return [
        # Detection latency is at most this interval past a node's deadline.
        Task("node-detect-down", 0.5, heartbeats.detect_down),
        Task("node-maintenance", 1.0, heartbeats.run_maintenance),
        Task("node-place", 5.0, place_all),
        Task("node-rewards", 60.0, credit_rewards),
        Task("node-escalate", 2.0, run_escalations),
        Task("node-silences", 1.0, run_silences),
        Task("node-flapping", 5.0, settle_flapping),
    ]
