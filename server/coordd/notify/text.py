"""One human line per notification (Slack text, e-mail subject and body)."""

from __future__ import annotations

from typing import Any


def _name(data: dict[str, Any], key: str) -> str:
    label = data.get(f"{key}_name") or ""
    resource = data.get(key) or ""
    return f"{label} ({resource})" if label and resource else str(label or resource)


def summary(event_type: str, data: dict[str, Any]) -> str:
    """e.g. `node edge-1 (nodes/01H...) is DOWN: no heartbeat for 30s`."""
    cause = data.get("cause") or ""
    if event_type in ("node.down", "workload.down"):
        kind = event_type.split(".")[0]
        return f"{kind} {_name(data, kind)} is DOWN" + (f": {cause}" if cause else "")
    if event_type in ("node.recovered", "workload.recovered"):
        kind = event_type.split(".")[0]
        seconds = data.get("outage_seconds")
        after = f" after {float(seconds):.0f}s down" if isinstance(seconds, int | float) else ""
        return f"{kind} {_name(data, kind)} recovered{after}"
    if event_type == "node.escalated":
        return f"node {_name(data, 'node')} is still DOWN and not acknowledged" + (
            f": {cause}" if cause else ""
        )
    if event_type == "node.reminder":
        return f"node {_name(data, 'node')} is still DOWN" + (f": {cause}" if cause else "")
    if event_type == "node.flapping":
        return f"node {_name(data, 'node')} is FLAPPING: {data.get('changes', '?')} changes"
    if event_type == "node.flapping_settled":
        return f"node {_name(data, 'node')} stopped flapping; now {data.get('status', '?')}"
    if event_type == "project.mass_outage":
        return f"mass outage in {data.get('project', '')}: {cause}"
    if event_type == "project.mass_outage_resolved":
        return f"mass outage in {data.get('project', '')} is over"
    if event_type == "channel.test":
        return "coordd test notification"
    return f"coordd {event_type}" + (f": {cause}" if cause else "")
