"""Publishing to a stream: ``StreamPublisher`` XADDs ``{k: id, d: payload}`` entries, creating
the stream's consumer group first so nothing published is ever trimmed before that group acked
it. ``Publisher`` is the protocol the feeder and evaluation publish through."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from common.transport import scripts
from common.transport.client import Resilient, ensure_group
from common.transport.entries import FLAT_MAX_BYTES, MAX_KEY, valid_key
from common.transport.keys import STREAM_GROUPS, Keys


class Publisher(Protocol):
    def publish(self, items: Sequence[tuple[str, bytes]]) -> int: ...


# One call appends a whole batch: one command to pack and one integer to parse instead of a
# pipeline of XADDs and their ids (the client-side cost dominates on small entries).
scripts.XADD_MANY = """
for i = 1, #ARGV, 2 do
  redis.call('XADD', KEYS[1], '*', 'k', ARGV[i], 'd', ARGV[i + 1])
end
return #ARGV / 2
"""


class StreamPublisher:
    """Appends ``(id, payload)`` entries to one stream."""

    def __init__(self, redis_: Resilient, keys: Keys, name: str):
        self.redis = redis_
        self.stream = keys.stream(name)
        self.group = STREAM_GROUPS.get(name)
        self.published = 0
        self._group_ready = False
        self._xadd_many = redis_.client.register_script(scripts.XADD_MANY)

    def _ensure(self) -> None:
        if self.group and not self._group_ready:
            self.redis.call(ensure_group, self.redis.client, self.stream, self.group)
            self._group_ready = True

    def publish(self, items: Sequence[tuple[str, bytes]]) -> int:
        """Append entries (atomically per chunk of 1000); returns how many were appended."""
        if not items:
            return 0
        bad = [key for key, _ in items if not valid_key(key.encode())]
        if bad:
            raise ValueError(f"ids must be 1-{MAX_KEY} bytes without newlines: {bad[0][:80]!r}")
        self._ensure()
        if sum(len(payload) for _, payload in items) > FLAT_MAX_BYTES * len(items):
            added = self._pipelined(items)
        else:
            added = 0
            for start in range(0, len(items), 1000):
                args = [part for item in items[start : start + 1000] for part in item]
                added += int(self.redis.call(self._xadd_many, keys=[self.stream], args=args))
        self.published += added
        return added

    def _pipelined(self, items: Sequence[tuple[str, bytes]]) -> int:
        def send() -> int:
            pipe = self.redis.client.pipeline(transaction=False)
            for key, payload in items:
                pipe.xadd(self.stream, {"k": key, "d": payload})
            return len(pipe.execute())

        return self.redis.call(send)


__all__ = ["Publisher", "StreamPublisher"]
