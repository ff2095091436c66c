"""The node domain's tables (models.py) and every query its rules make: queries.py (projects,
nodes, keys, workloads, assignments, placement) and health.py (heartbeats, detection, the
state machine's rows, maintenance, uptime, rewards)."""
