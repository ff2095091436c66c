"""Committed domain events, fanned out in-process and between replicas.

bus.py: the bus (in-process `EventBus`; `ReplicatedBus` over transports) and `make_bus`;
pgbus.py: PostgreSQL LISTEN/NOTIFY; redisbus.py: Redis pub/sub; link.py: a transport's state;
notify.py: the Notifier that wakes waiting streams by key.
"""
