"""The notification outbox's tables (models.py) and its queries (queries.py)."""
