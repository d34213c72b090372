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
    """The sync records of one run in Redis."""

    def __init__(self, redis_: Resilient, keys: Keys):
        self.redis, self.keys = redis_, keys

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
        self.redis.call(self.redis.client.set, f"{self.keys.sync}:push", json.dumps(body))

    def read(self) -> SyncState:
        """The current epoch, the latest push and the policy version, in one round trip."""
        raw_epoch, raw_push, raw_version = self.redis.call(
            self.redis.client.mget,
            [self.keys.sync, f"{self.keys.sync}:push", self.keys.policy_version],
        )
        epoch = EpochRecord(**json.loads(raw_epoch)) if raw_epoch else None
        push = None
        if raw_push:
            body = json.loads(raw_push)
            push = PushRecord(body["version"], body["epoch"], body["buckets"], body["created"])
        return SyncState(epoch, push, int(raw_version) if raw_version is not None else 0)

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
