"""Outbound notifications: owner-scoped webhook channels and a transactional outbox.

Any domain queues a notification with `outbox.enqueue(tx, ...)` inside the transaction
that makes the change; the `notify-deliver` scheduler task signs and POSTs it with retries.
"""
