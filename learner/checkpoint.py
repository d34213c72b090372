"""Checkpoints of the sharded learner: ``<root>/step_<n>``, written atomically.

A checkpoint holds the sharded model and optimizer (torch.distributed.checkpoint), each rank's
RNG state, rank 0's ``meta.json`` (the caller's state: step, scheduler, version, feeder cursor,
...) and optionally an HF folder (safetensors + config + tokenizer) that transformers and vLLM
load. It is written under a temporary name and renamed only once complete, so
``list_checkpoints`` never returns a half-written one. Saving and loading are collective: every
rank calls them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist


class CheckpointFailed(RuntimeError):
    """Writing a checkpoint failed (disk full, folder unwritable); nothing of it was kept."""


def save_checkpoint(
    root: str,
    name: str,
    model: Any,
    optimizer: Any,
    meta: dict[str, Any],
    keep_last: int,
    control: Any,
    export_hf: Callable[[str], None] | None = None,
) -> str:
    """Write ``<root>/<name>``; rank 0 writes ``meta`` and prunes all but the ``keep_last``
    newest. ``export_hf(folder)`` (collective) writes the HF folder inside it."""
    rank = dist.get_rank()
    final, tmp = os.path.join(root, name), os.path.join(root, f".tmp-{name}")
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        return _write(root, final, tmp, model, optimizer, meta, keep_last, control, export_hf)
    except (Exception, CheckpointException) as exc:  # DCP's error is a BaseException
        if rank == 0:  # the partial copy goes; the previous checkpoints were never touched
            shutil.rmtree(tmp, ignore_errors=True)
        reason = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ""
        raise CheckpointFailed(
            f"{type(exc).__name__}: {reason} (writing {final}; {_free_space(root)})"
        ) from None


def _free_space(root: str) -> str:
    """How much room the checkpoint's disk has: the usual cause, stated (torch's own error
    for a full disk can be as terse as 'unexpected pos 704 vs 598')."""
    try:
        usage = shutil.disk_usage(root)
    except OSError as exc:
        return f"disk usage unknown: {exc}"
    return f"{usage.free / 2**20:.1f} MB free of {usage.total / 2**20:.0f} MB on that disk"


def _write(root, final, tmp, model, optimizer, meta, keep_last, control, export_hf) -> str:
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier(group=control)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
    torch.save(torch.get_rng_state(), os.path.join(tmp, f"rng_rank{rank}.pt"))
    if export_hf is not None:
        export_hf(os.path.join(tmp, "hf"))
    dist.barrier(group=control)
    if rank == 0:
        with open(os.path.join(tmp, "meta.json"), "w") as fh:
            json.dump(meta, fh)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)  # the checkpoint exists only once it is complete
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier(group=control)
    return final


def load_checkpoint(path: str, model: Any, optimizer: Any) -> dict[str, Any]:
    """Restore model, optimizer and this rank's RNG from ``path``; returns its meta."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    with open(os.path.join(path, "meta.json")) as fh:
        meta = json.load(fh)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )
    rng = os.path.join(path, f"rng_rank{dist.get_rank()}.pt")
    if os.path.exists(rng):
        torch.set_rng_state(torch.load(rng))
    return meta


def write_hf_folder(full: dict[str, torch.Tensor], out: str, model_path: str) -> None:
    """Full weights as safetensors beside the source model's config and tokenizer files."""
    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in full.items()},
        os.path.join(out, "model.safetensors"),
        metadata={"format": "pt"},
    )
    for name in os.listdir(model_path):
        if name.endswith((".json", ".jinja", ".txt", ".model")) and "index" not in name:
            shutil.copy(os.path.join(model_path, name), out)


def list_checkpoints(root: str) -> list[str]:
    """Complete checkpoints under ``root``, oldest first."""
    if not os.path.isdir(root):
        return []
    names = sorted(
        n
        for n in os.listdir(root)
        if n.startswith("step_") and os.path.exists(os.path.join(root, n, "meta.json"))
    )
    return [os.path.join(root, n) for n in names]


__all__ = [
    "CheckpointFailed",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
    "write_hf_folder",
]
