"""The sync records of a run in Redis (``SyncBoard``): the current epoch (who is in the group
and with which ranks), the latest push (version, epoch, bucket layout), the receivers' acks per
push attempt, and the policy version."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from common.transport.client import Resilient
from common.transport.keys import Keys
from common.transport.weight_sync.groups import GroupSpec


@dataclass
class EpochRecord:
    epoch: int
    host: str
    port: int
    world_size: int
    backend: str
    timeout_s: float
    ranks: dict[str, list[int]] = field(default_factory=dict)  # member id -> [first, count]

    def spec(self) -> GroupSpec:
        return GroupSpec(
            self.epoch, self.host, self.port, self.world_size, self.backend, self.timeout_s
        )


@dataclass
class PushRecord:
    """One weight push: receivers take part in one broadcast per bucket, in order.
    ``buckets`` is the plain-data form (``buckets_to_wire``), as it crosses collective_rpc."""

    version: int
    epoch: int
    buckets: list
    created: float = field(default_factory=time.time)


@dataclass(frozen=True)
class SyncState:
    """What a receiver reads each poll: the epoch, the latest push, the learner's version."""

    epoch: EpochRecord | None
    push: PushRecord | None
    policy_version: int


class SyncBoard:
    """The sync records of one run in Redis. Receivers poll ``read`` every few milliseconds
    while they generate, so it fetches the push's bucket layout (one entry per parameter:
    tens of KB for a 7B model) only when the push's head (version, epoch) changed, and parses
    the epoch record only when its bytes changed."""

    def __init__(self, redis_: Resilient, keys: Keys):
        self.redis, self.keys = redis_, keys
        self._epoch: tuple[bytes | None, EpochRecord | None] = (None, None)
        self._push: tuple[bytes | None, PushRecord | None] = (None, None)

    def acks_key(self, version: int, epoch: int) -> str:
        """Acks of one push attempt: a retried push (same version, new epoch) starts clean."""
        return f"{self.keys.sync}:acks:{version}:{epoch}"

    def publish_epoch(self, record: EpochRecord) -> None:
        self.redis.call(self.redis.client.set, self.keys.sync, json.dumps(asdict(record)))

    def publish_push(self, push: PushRecord) -> None:
        body = {
            "version": push.version,
            "epoch": push.epoch,
            "created": push.created,
            "buckets": push.buckets,
        }
        head = f"{push.version} {push.epoch} {push.created!r}"

        def write() -> None:  # body and head change together (MULTI)
            pipe = self.redis.client.pipeline(transaction=True)
            pipe.set(f"{self.keys.sync}:push", json.dumps(body))
            pipe.set(f"{self.keys.sync}:push:head", head)
            pipe.execute()

        self.redis.call(write)

    def read(self) -> SyncState:
        """The current epoch, the latest push and the policy version: one round trip, plus one
        for the push's body when its head changed since the last read."""
        raw_epoch, head, raw_version = self.redis.call(
            self.redis.client.mget,
            [self.keys.sync, f"{self.keys.sync}:push:head", self.keys.policy_version],
        )
        if raw_epoch != self._epoch[0]:
            self._epoch = (raw_epoch, EpochRecord(**json.loads(raw_epoch)) if raw_epoch else None)
        if head != self._push[0]:
            self._push = (head, self._read_push() if head else None)
        return SyncState(
            self._epoch[1], self._push[1], int(raw_version) if raw_version is not None else 0
        )

    def _read_push(self) -> PushRecord | None:
        raw = self.redis.call(self.redis.client.get, f"{self.keys.sync}:push")
        if not raw:
            return None
        body = json.loads(raw)
        return PushRecord(body["version"], body["epoch"], body["buckets"], body["created"])

    def ack(self, version: int, epoch: int, member: str, ok: bool, detail: str = "") -> None:
        value = json.dumps({"ok": ok, "detail": detail[:500], "time": time.time()})
        key = self.acks_key(version, epoch)

        def write() -> None:
            pipe = self.redis.client.pipeline(transaction=False)
            pipe.hset(key, member, value)
            pipe.expire(key, 3600)
            pipe.execute()

        self.redis.call(write)

    def acks(self, version: int, epoch: int) -> dict[str, dict]:
        raw = self.redis.call(self.redis.client.hgetall, self.acks_key(version, epoch))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def policy_version(self) -> int:
        raw = self.redis.call(self.redis.client.get, self.keys.policy_version)
        return int(raw) if raw is not None else 0

    def set_policy_version(self, version: int) -> None:
        self.redis.call(self.redis.client.set, self.keys.policy_version, version)


__all__ = ["EpochRecord", "PushRecord", "SyncBoard", "SyncState"]
