"""Parameters packed for the wire: tensors of one dtype back to back in flat buckets.

Only the layout (names, shapes, dtypes, offsets) travels through Redis; the flat tensors travel
over the sync group. ``CpuBuffers`` keeps flat CPU tensors between pushes on both ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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


__all__ = [
    "Bucket",
    "BucketItem",
    "CpuBuffers",
    "buckets_from_wire",
    "buckets_to_wire",
    "pack_bucket",
    "plan_buckets",
    "unpack_bucket",
]
