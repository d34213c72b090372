"""Shared foundation of every role: the config tree (``config``), wire schemas (``schemas``),
the two transports (``transport``: rollouts over Redis Streams, and the weight-sync rendezvous),
membership heartbeats, the process shell (``shell``: work loop + REST app), metrics, logging,
sockets and the embedded Redis. No torch at import; imports no role package."""
