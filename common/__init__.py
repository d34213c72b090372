"""Shared foundation: config tree, wire schemas, Redis Streams transport, membership,
metrics and logging helpers, embedded Redis and the tiny-model builder. No torch at import."""
