"""Weight-sync group: rendezvous records in Redis, stateless process groups, packed buckets.

Parts and who owns what:
- The learner (the sender, always rank 0) owns the epoch: whenever the set of live
  sync-capable generators changes it starts a new epoch, hosts the group's TCPStore and
  publishes an ``EpochRecord`` (Redis key ``sync``) naming every member's ranks. Per weight
  push it publishes a ``PushRecord`` (key ``sync:push``: version, epoch, bucket layout) and then
  broadcasts one flat tensor per bucket. Receivers ack in ``sync:acks:<version>``.
- A receiver (a vLLM worker through its worker extension, or the hf engine) joins the epoch's
  group with its assigned rank and takes part in one broadcast per bucket.
- ``SyncBoard`` reads and writes those Redis records; both sides use it.

Only metadata (names, shapes, dtypes, offsets) travels through Redis; tensors travel only over
the process group (gloo on CPU, NCCL on GPU: the same code, ``create_group`` picks the class).
The groups are "stateless": built from a TCPStore directly, never the default process group,
so they coexist with the one vLLM creates for itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from common.transport.client import Resilient
from common.transport.keys import Keys

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class BucketItem:
    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int


@dataclass(frozen=True)
class Bucket:
    """Tensors of one dtype packed back to back into one flat tensor of ``numel`` elements."""

    dtype: str
    numel: int
    items: tuple[BucketItem, ...]


def plan_buckets(
    specs: Iterable[tuple[str, Sequence[int], str]], bucket_bytes: int
) -> list[Bucket]:
    """Group ``(name, shape, dtype)`` in order into buckets of one dtype, each at most
    ``bucket_bytes`` (a tensor larger than that gets a bucket of its own)."""
    import torch

    buckets: list[Bucket] = []
    open_: dict[str, list[BucketItem]] = {}
    sizes: dict[str, int] = {}

    def close(dtype: str) -> None:
        items = open_.pop(dtype, [])
        if items:
            buckets.append(Bucket(dtype, sizes.pop(dtype), tuple(items)))

    for name, shape, dtype in specs:
        numel = 1
        for dim in shape:
            numel *= int(dim)
        itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
        if open_.get(dtype) and (sizes[dtype] + numel) * itemsize > bucket_bytes:
            close(dtype)
        items = open_.setdefault(dtype, [])
        offset = sizes.get(dtype, 0)
        items.append(BucketItem(name, tuple(int(d) for d in shape), offset, numel))
        sizes[dtype] = offset + numel
    for dtype in list(open_):
        close(dtype)
    return buckets


def pack_bucket(
    bucket: Bucket, tensors: Mapping[str, torch.Tensor], device: Any = None, out: Any = None
):
    """One flat tensor holding the bucket's tensors: written into ``out`` when given (a buffer
    kept between pushes), else a new one on ``device`` (default: the first tensor's)."""
    import torch

    first = tensors[bucket.items[0].name]
    flat = out
    if flat is None:
        dtype = getattr(torch, bucket.dtype)
        flat = torch.empty(bucket.numel, dtype=dtype, device=device or first.device)
    for item in bucket.items:
        flat[item.offset : item.offset + item.numel].copy_(tensors[item.name].reshape(-1))
    return flat


class CpuBuffers:
    """Flat CPU tensors kept between pushes, one per bucket (by index, dtype and size): fresh
    pages would be faulted in during every transfer and slow it down (up to 2x, measured).
    Both ends use one: the learner's send buffers and each receiver's receive buffers."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, str, int], Any] = {}

    def get(self, index: int, bucket: Bucket):
        import torch

        key = (index, bucket.dtype, bucket.numel)
        if key not in self._buffers:
            self._buffers[key] = torch.empty(bucket.numel, dtype=getattr(torch, bucket.dtype))
        return self._buffers[key]


def unpack_bucket(bucket: Bucket, flat: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Views into ``flat`` with their names and shapes (no copies)."""
    return [
        (item.name, flat[item.offset : item.offset + item.numel].view(item.shape))
        for item in bucket.items
    ]


def buckets_to_wire(buckets: Sequence[Bucket]) -> list:
    return [
        [b.dtype, b.numel, [[i.name, list(i.shape), i.offset, i.numel] for i in b.items]]
        for b in buckets
    ]


def buckets_from_wire(raw: Sequence) -> list[Bucket]:
    return [
        Bucket(
            dtype,
            int(numel),
            tuple(BucketItem(n, tuple(s), int(o), int(c)) for n, s, o, c in items),
        )
        for dtype, numel, items in raw
    ]


# --------------------------------------------------------------------------- process groups


@dataclass(frozen=True)
class GroupSpec:
    """Everything a rank needs to join one epoch's group."""

    epoch: int
    host: str
    port: int
    world_size: int
    backend: str
    timeout_s: float


def resolve_backend(backend: str) -> str:
    """``auto`` -> nccl when CUDA is available, else gloo."""
    if backend != "auto":
        return backend
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def create_group(spec: GroupSpec, rank: int, store: Any = None):
    """Join the epoch's group as ``rank`` (rank 0 passes the TCPStore it hosts). Blocks until
    every rank has joined or ``spec.timeout_s`` passes. Returns ``(store, group)``."""
    import torch.distributed as dist

    timeout = timedelta(seconds=spec.timeout_s)
    if store is None:
        store = dist.TCPStore(
            spec.host, spec.port, spec.world_size, is_master=False, timeout=timeout
        )
    prefixed = dist.PrefixStore(f"luffy/epoch{spec.epoch}", store)
    # lets rank 0 name the ranks that never arrived when building the group times out
    prefixed.set(f"joined/{rank}", "1")
    if spec.backend == "nccl":
        group = dist.ProcessGroupNCCL(prefixed, rank, spec.world_size)
    elif spec.backend == "gloo":
        group = dist.ProcessGroupGloo(prefixed, rank, spec.world_size, timeout)
    else:
        raise ValueError(f"unknown weight-sync backend {spec.backend!r}")
    return store, group


def joined_ranks(store: Any, epoch: int, world_size: int) -> list[int]:
    """Ranks of ``epoch`` that reached ``create_group`` (see the marker it sets)."""
    import torch.distributed as dist

    prefixed = dist.PrefixStore(f"luffy/epoch{epoch}", store)
    return [r for r in range(world_size) if prefixed.check([f"joined/{r}"])]


def host_store(host: str, port: int, world_size: int, timeout_s: float):
    """The TCPStore rank 0 hosts (``port`` 0 picks a free one); returns ``(store, port)``."""
    import torch.distributed as dist

    store = dist.TCPStore(
        host,
        port,
        world_size,
        is_master=True,
        timeout=timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )
    return store, store.port


def broadcast_async(group: Any, tensor: torch.Tensor, root: int = 0) -> Any:
    """Start a broadcast on a stateless group; ``.wait()`` the returned work."""
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = root
    return group.broadcast([tensor], opts)


def broadcast(group: Any, tensor: torch.Tensor, root: int = 0) -> None:
    broadcast_async(group, tensor, root).wait()


# --------------------------------------------------------------------------- Redis records


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

    def read(self) -> tuple[EpochRecord | None, PushRecord | None]:
        """The current epoch and the latest push, in one round trip."""
        raw_epoch, raw_push = self.redis.call(
            self.redis.client.mget, [self.keys.sync, f"{self.keys.sync}:push"]
        )
        epoch = EpochRecord(**json.loads(raw_epoch)) if raw_epoch else None
        push = None
        if raw_push:
            body = json.loads(raw_push)
            push = PushRecord(body["version"], body["epoch"], body["buckets"], body["created"])
        return epoch, push

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


__all__ = [
    "Bucket",
    "BucketItem",
    "CpuBuffers",
    "EpochRecord",
    "GroupSpec",
    "PushRecord",
    "SyncBoard",
    "broadcast",
    "broadcast_async",
    "buckets_from_wire",
    "buckets_to_wire",
    "create_group",
    "host_store",
    "joined_ranks",
    "pack_bucket",
    "plan_buckets",
    "resolve_backend",
    "unpack_bucket",
]
