"""Slack-compatible incoming-webhook payloads (Slack, Mattermost, Rocket.Chat, Discord's
/slack endpoint): a `text` line, the event in an attachment's fields. Posted like any
webhook (notify/webhook.py: same address guard, same signature headers)."""

from __future__ import annotations

import json
from typing import Any

from coordd.notify.text import summary

_COLORS = {"down": "#d00000", "recovered": "#2eb886", "flapping": "#ffaa00", "escalated": "#d00000"}


def payload(event_type: str, delivery_id: str, data: dict[str, Any]) -> str:
    text = summary(event_type, data)
    color = next((c for k, c in _COLORS.items() if event_type.endswith(k)), "#439fe0")
    fields = [
        {"title": key, "value": str(value), "short": len(str(value)) < 40}
        for key, value in sorted(data.items())
        if isinstance(value, str | int | float) and key not in ("subject",)
    ]
    body = {
        "text": f"[coordd] {text}",
        "attachments": [
            {"fallback": text, "color": color, "fields": fields, "footer": f"delivery {delivery_id}"}
        ],
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"))
