"""Delivery adapters for outbound notifications: signed webhook POSTs (webhook.py: HMAC
signing, the guard against non-public targets, HTTP), Slack-compatible payloads (slack.py),
e-mail over SMTP (smtp.py), one human line per event (text.py); `send_to` picks by kind.
The rules (channels, the outbox, retries, backoff, the circuit breaker) live in
domain/notify/, the tables in store/notify/.
"""

from coordd.notify.outcome import Outcome
from coordd.notify.targets import send_to

__all__ = ["Outcome", "send_to"]
