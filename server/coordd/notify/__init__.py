"""Delivery adapters for outbound notifications: signed webhook POSTs (webhook.py: HMAC
signing, the guard against non-public targets, HTTP). The rules (channels, the outbox,
retries and backoff) live in domain/notify/, the tables in store/notify/.
"""
