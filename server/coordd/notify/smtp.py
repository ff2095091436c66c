"""E-mail notifications over SMTP with the standard library.

A channel's URL names the server and the recipients:
`smtp://[user@]host[:port]/?to=ops@example.com,oncall@example.com&from=coordd@example.com`
(`smtps://` for implicit TLS; `?starttls=1` to upgrade a plain connection). The channel's
secret, if any, is the SMTP password for `user`. The same address guard as for webhooks
applies to the server's resolved addresses.
"""

from __future__ import annotations

import json
import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import make_msgid
from urllib.parse import parse_qs, unquote, urlparse

from coordd.notify.outcome import Outcome
from coordd.notify.text import summary
from coordd.notify.webhook import DELIVERY_HEADER, EVENT_HEADER, TIMEOUT_S, non_public

SCHEMES = ("smtp", "smtps")


def recipients(url: str) -> tuple[list[str], str]:
    """(to addresses, from address) of a channel URL; ValueError when malformed."""
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    to = [a.strip() for value in query.get("to", []) for a in value.split(",") if a.strip()]
    sender = (query.get("from") or ["coordd@localhost"])[0]
    for address in [*to, sender]:
        local, _, domain = address.partition("@")
        if not local or not domain or any(c in address for c in " \r\n<>,;"):
            raise ValueError(f"{address!r} is not an e-mail address")
    if not to:
        raise ValueError("the URL needs ?to=address[,address...]")
    return to, sender


def message(url: str, body: str, event_type: str, delivery_id: str) -> EmailMessage:
    to, sender = recipients(url)
    try:
        data = json.loads(body).get("data", {})
    except (ValueError, AttributeError):
        data = {}
    line = summary(event_type, data if isinstance(data, dict) else {})
    mail = EmailMessage()
    mail["Subject"] = f"[coordd] {line}"[:200]
    mail["From"] = sender
    mail["To"] = ", ".join(to)
    mail["Message-ID"] = make_msgid(idstring=delivery_id, domain="coordd")
    mail[EVENT_HEADER] = event_type
    mail[DELIVERY_HEADER] = delivery_id
    mail.set_content(f"{line}\n\n{json.dumps(json.loads(body), indent=2, sort_keys=True)}\n")
    return mail


def send(
    url: str, password: str, body: str, event_type: str, delivery_id: str, allow_private_networks: bool
) -> Outcome:
    parsed = urlparse(url)
    host = parsed.hostname or ""
    try:
        port = parsed.port or (465 if parsed.scheme == "smtps" else 25)
        mail = message(url, body, event_type, delivery_id)
        addresses = [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
    except (OSError, ValueError) as exc:
        return Outcome(False, 0, f"{type(exc).__name__}: {exc}"[:500])
    if not allow_private_networks:
        blocked = [a for a in addresses if non_public(a)]
        if blocked:
            return Outcome(False, 0, f"refused: {host} resolves to {blocked[0]}, not a public address")
    address = addresses[0]
    try:
        if parsed.scheme == "smtps":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                address, port, timeout=TIMEOUT_S, context=ssl.create_default_context()
            )
        else:
            client = smtplib.SMTP(address, port, timeout=TIMEOUT_S)
        with client:
            if parse_qs(parsed.query).get("starttls") == ["1"]:
                client.starttls(context=ssl.create_default_context())
            if parsed.username:
                client.login(unquote(parsed.username), password)
            refused = client.send_message(mail)
    except smtplib.SMTPResponseException as exc:
        return Outcome(False, exc.smtp_code, f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"[:500])
    except (OSError, smtplib.SMTPException, ValueError) as exc:
        return Outcome(False, 0, f"{type(exc).__name__}: {exc}"[:500])
    if refused:
        return Outcome(False, 550, f"refused recipients: {', '.join(sorted(refused))}"[:500])
    return Outcome(True, 250, "")
