"""The two transports of a run, side by side.

Rollouts (and prompts, scored samples) travel over Redis Streams: ``keys`` (every key of a run
and the stream -> group table), ``client`` (``Resilient``: retries with back-off), ``publish``
(``StreamPublisher``), ``consume`` (``StreamConsumer``: at-least-once delivery, exactly-once
effect by id, deadletter), ``scripts`` (the Lua they run, one ``.lua`` file each) and ``admin``
(trimming, queue depths, the stale-run check, deleting a run).

Weights travel learner -> generators over a process group: ``weight_sync`` (the rendezvous
records in Redis, the stateless gloo/NCCL groups, dtype-packed buckets).

This package re-exports the stream transport's public names; ``weight_sync`` is imported by
its own name (it is the other transport, and it loads torch lazily).
"""

from common.transport.admin import delete_run_keys, stale_run_refusal, stream_depths, trim_acked
from common.transport.client import TRANSIENT_ERRORS, Resilient, Stopped, connect, ensure_group
from common.transport.consume import (
    ConsumerStats,
    Delivery,
    Output,
    RunStateLost,
    StreamConsumer,
)
from common.transport.keys import STREAM_GROUPS, Keys
from common.transport.publish import Publisher, StreamPublisher

__all__ = [
    "STREAM_GROUPS",
    "TRANSIENT_ERRORS",
    "ConsumerStats",
    "Delivery",
    "Keys",
    "Output",
    "Publisher",
    "Resilient",
    "RunStateLost",
    "Stopped",
    "StreamConsumer",
    "StreamPublisher",
    "connect",
    "delete_run_keys",
    "ensure_group",
    "stale_run_refusal",
    "stream_depths",
    "trim_acked",
]
