"""The weight transport: learner -> generators over a process group, coordinated in Redis.

Parts and who owns what:
- The learner (the sender, always rank 0) owns the epoch: whenever the set of live
  sync-capable generators changes it starts a new epoch, hosts the group's TCPStore and
  publishes an ``EpochRecord`` (Redis key ``sync``) naming every member's ranks. Per weight
  push it publishes a ``PushRecord`` (key ``sync:push``: version, epoch, bucket layout) and then
  broadcasts one flat tensor per bucket. Receivers ack in ``sync:acks:<version>:<epoch>``.
- A receiver (a vLLM worker through its worker extension, or the hf engine) joins the epoch's
  group with its assigned rank, connects, and takes part in one broadcast per bucket.
- ``board``: ``SyncBoard`` reads and writes those Redis records; both sides use it.
- ``groups``: ``SyncGroup``, one rank's member of an epoch's group (gloo on CPU, NCCL on GPU),
  with an eager timed connect and timed waits so both backends fail the same way.
- ``buckets``: the dtype-packed flat tensors and their layout.

Only metadata travels through Redis; tensors travel only over the process group.
"""

from common.transport.weight_sync.board import EpochRecord, PushRecord, SyncBoard, SyncState
from common.transport.weight_sync.buckets import (
    Bucket,
    BucketItem,
    CpuBuffers,
    buckets_from_wire,
    buckets_to_wire,
    pack_bucket,
    plan_buckets,
    unpack_bucket,
)
from common.transport.weight_sync.groups import (
    BACKENDS,
    GroupSpec,
    SyncGroup,
    SyncTimeout,
    create_group,
    host_store,
    joined_ranks,
    resolve_backend,
)

__all__ = [
    "BACKENDS",
    "Bucket",
    "BucketItem",
    "CpuBuffers",
    "EpochRecord",
    "GroupSpec",
    "PushRecord",
    "SyncBoard",
    "SyncGroup",
    "SyncState",
    "SyncTimeout",
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
