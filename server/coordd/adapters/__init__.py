"""Runtime adapters that are neither rules nor store: the heartbeat tracker (heartbeats.py)
keeps last-seen in memory, flushes it to the database and Redis, and reads it back for the
detector."""
