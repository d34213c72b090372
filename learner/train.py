"""FSDP2 training of the policy with LUFFY's objective.

``Trainer`` (one per rank) owns the sharded model (``learner.policy``), the AdamW optimizer and
the LR schedule. ``train_step`` splits the batch into micro-batches by token budget
(``learner.microbatch``: the same number on every rank, as FSDP's collectives need),
accumulates gradients of the objective's token losses (``learner.objective``), clips, and skips
(counts) a step whose loss or gradient is not finite, leaving the weights untouched. Weights
out (``full_state_dict``) and checkpoints (``learner.checkpoint``) are collective; rank 0 makes
every rank call them through ``learner.collective.Ranks``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from common.config import Config
from learner.batch import Sample, TrainBatch
from learner.checkpoint import load_checkpoint, save_checkpoint, write_hf_folder
from learner.diagnostics import FIELDS as DIAGNOSTICS
from learner.diagnostics import summarize, token_sums
from learner.microbatch import (
    collate,
    collate_shared,
    plan_microbatches,
    plan_shared_microbatches,
    prompt_key,
)
from learner.objective import Objective, micro_batch_loss, token_losses
from learner.policy import build_model
from learner.schedule import lr_factor, schedule_horizon, warmup_steps

log = logging.getLogger(__name__)


def rank_device(backend: str, environ: dict[str, str] | None = None) -> torch.device:
    """This rank's device: ``cuda:<LOCAL_RANK>`` under NCCL (each rank its own GPU; without
    it every rank lands on cuda:0), else the CPU."""
    if backend != "nccl":
        return torch.device("cpu")
    environ = os.environ if environ is None else environ
    return torch.device("cuda", int(environ.get("LOCAL_RANK", "0")))


def init_distributed(backend: str, timeout_s: float = 600.0) -> tuple[int, int]:
    """Join torchrun's group (RANK/WORLD_SIZE in env) or make a group of one; under NCCL bind
    this process to its GPU first and tell the group (``device_id``: eager NCCL init)."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    device = rank_device(backend)
    timeout = timedelta(seconds=timeout_s)
    device_id = None
    if device.type == "cuda":
        torch.cuda.set_device(device)
        device_id = device
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend, device_id=device_id, timeout=timeout)
    else:
        from common.net import free_port

        dist.init_process_group(
            backend,
            init_method=f"tcp://127.0.0.1:{free_port()}",
            rank=0,
            world_size=1,
            device_id=device_id,
            timeout=timeout,
        )
    return dist.get_rank(), dist.get_world_size()


def train_backend(sync_backend: str) -> str:
    return "nccl" if torch.cuda.is_available() and sync_backend != "gloo" else "gloo"


@dataclass
class StepResult:
    step: int
    skipped: bool
    loss: float
    parts: dict[str, float] = field(default_factory=dict)
    entropy: float = 0.0
    grad_norm: float = 0.0
    tokens: int = 0
    seconds: float = 0.0
    lr: float = 0.0
    diagnostics: dict[str, float] = field(default_factory=dict)


class Trainer:
    def __init__(self, cfg: Config, objective: Objective):
        self.cfg, self.objective = cfg, objective
        timeout_s = cfg.learner.collective_timeout_s
        self.rank, self.world = init_distributed(train_backend(cfg.sync.backend), timeout_s)
        # object broadcasts, whatever the backend; a rank that stops answering fails them (and
        # the learner) within the timeout instead of hanging it
        self.control = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
        self.device = rank_device(dist.get_backend())
        torch.manual_seed(cfg.run.seed)
        self.model = build_model(cfg, self.device)
        lc = cfg.learner
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # LoRA: adapters
        self.optimizer = torch.optim.AdamW(
            trainable, lr=lc.lr, betas=lc.betas, weight_decay=lc.weight_decay
        )
        self.total_steps = lc.max_steps  # rank 0 plans the real count (``plan_steps``)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.pad_id = int(getattr(self.model.lm.config, "pad_token_id", None) or 0)
        eos = getattr(self.model.lm.config, "eos_token_id", None)
        self.eos_id = int(eos[0] if isinstance(eos, list) else eos if eos is not None else -1)
        self.share_prompts = lc.share_prompts and not lc.activation_checkpointing
        if lc.share_prompts and lc.activation_checkpointing:
            log.info("learner.share_prompts is off: activation checkpointing drops the KV cache")
        self.step = 0
        self.skipped = 0

    def plan_steps(self, total: int) -> None:
        """The run's planned optimizer steps (its LR schedule ends there). Collective."""
        self.total_steps = total

    def _lr_factor(self, step: int) -> float:
        lc = self.cfg.learner
        horizon = schedule_horizon(self.total_steps, lc.schedule_steps)
        warmup = warmup_steps(lc.warmup_steps, lc.warmup_ratio, horizon)
        return lr_factor(step, warmup, horizon, lc.lr_schedule, lc.min_lr_ratio)

    # ---------------------------------------------------------------- the step

    def train_step(self, batch: TrainBatch) -> StepResult:
        started = time.perf_counter()
        samples = batch.samples
        plan = self._plan(samples)[self.rank]
        n_tokens = sum(s.response_len for s in samples)
        denom = self.objective.denominator(len(samples), n_tokens)
        # on, off, sft, entropy sum, tokens, loss, then the diagnostics' sums
        totals = torch.zeros(6 + len(DIAGNOSTICS), dtype=torch.float64)
        self.model.train()
        for micro in plan:
            totals += self._micro_step([samples[i] for i in micro], denom, max(1, n_tokens))
        dist.all_reduce(totals, group=self.control)
        grad_norm = self._grad_norm()
        diagnostics = summarize(totals[6:], grad_norm, self.cfg.learner.grad_clip)
        loss = float(totals[5])
        entropy = float(totals[3]) / max(1.0, float(totals[4]))
        skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
        if skipped:
            self.skipped += 1
            log.warning("step %d skipped: loss %s, grad norm %s", self.step + 1, loss, grad_norm)
        else:
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        parts = {k: float(v) / denom for k, v in zip(("on", "off", "sft"), totals[:3], strict=True)}
        return StepResult(
            step=self.step,
            skipped=skipped,
            loss=loss,
            parts=parts,
            entropy=entropy,
            grad_norm=grad_norm,
            tokens=int(totals[4]),
            seconds=time.perf_counter() - started,
            lr=self.scheduler.get_last_lr()[0],
            diagnostics=diagnostics,
        )

    def _plan(self, samples: list[Sample]) -> list[list[list[int]]]:
        budget = self.cfg.learner.micro_batch_tokens
        if self.share_prompts:
            return plan_shared_microbatches(
                [prompt_key(s) for s in samples],
                [s.prompt_len for s in samples],
                [s.response_len for s in samples],
                budget,
                self.world,
            )
        return plan_microbatches([len(s.input_ids) for s in samples], budget, self.world)

    def _micro_step(self, samples: list[Sample], denom: float, n_tokens: int) -> torch.Tensor:
        batch = (collate_shared if self.share_prompts else collate)(
            samples, self.pad_id, self.device
        )
        logp, entropy = self.model(batch)
        parts = token_losses(
            self.objective, logp, batch["behav"], batch["adv"], batch["off"], batch["off_seq"]
        )
        loss = micro_batch_loss(self.objective, parts, entropy, batch["off_seq"], denom, n_tokens)
        # FSDP averages gradients over ranks: scale so the sum over ranks is the step's loss
        (loss * self.world).backward()
        sums = token_sums(
            logp,
            batch["behav"],
            batch["off"],
            batch["fresh"],
            batch["targets"],
            self.eos_id,
            self.cfg.algorithm.is_cap,
        )
        with torch.no_grad():
            head = [parts["on"].sum(), parts["off"].sum(), parts["sft"].sum(), entropy.sum()]
            head = [float(x) for x in head] + [float(logp.numel()), float(loss)]
            return torch.cat([torch.tensor(head, dtype=torch.float64), sums])

    def _grad_norm(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.learner.grad_clip)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    # ---------------------------------------------------------------- weights out

    def full_state_dict(
        self, dtype: str | None = None, on_device: bool = False
    ) -> dict[str, torch.Tensor]:
        """Full (unsharded) HF-named tensors on rank 0 (empty elsewhere), gathered one parameter
        at a time (rank 0's peak is the model in ``dtype`` plus one gathered parameter), cast to
        ``dtype`` (default: as trained) and moved to the CPU unless ``on_device`` (a push over
        NCCL sends them from the GPU). With LoRA, the base model's names with the adapters
        merged in. Collective."""
        lora = self.cfg.learner.lora
        gathered = self._gather(None if lora else dtype, on_device)
        if lora is None or self.rank != 0:
            return gathered
        from learner.lora import merge_adapters, scale

        cast = getattr(torch, dtype) if dtype else None
        merged = merge_adapters(gathered, scale(lora))
        return {k: v.to(dtype=cast or v.dtype) for k, v in merged.items()}

    def _gather(self, dtype: str | None, on_device: bool) -> dict[str, torch.Tensor]:
        """Every trained tensor, unsharded on rank 0 under its HF name (LoRA: PEFT's)."""
        cast = getattr(torch, dtype) if dtype else None
        out: dict[str, torch.Tensor] = {}
        tied = self._tied_names()
        for name, value in self.model.state_dict().items():
            if name in tied:  # sent and saved once; config.json's tie_word_embeddings re-ties it
                continue
            full = value.full_tensor() if hasattr(value, "full_tensor") else value
            if self.rank == 0:
                full = full.to(dtype=cast or full.dtype)
                out[name.removeprefix("lm.")] = full if on_device else full.cpu()
        return out

    def _tied_names(self) -> set[str]:
        """Second and later names of a parameter shared by several (a tied LM head:
        ``lm_head.weight`` is ``model.embed_tokens.weight``). HF's own files hold the first
        only, safetensors refuses a tensor saved twice, and a push would send it twice."""
        seen: set[int] = set()
        tied = set()
        for name, param in self.model.named_parameters(remove_duplicate=False):
            if id(param) in seen:
                tied.add(name)
            seen.add(id(param))
        return tied

    # ---------------------------------------------------------------- checkpoints

    def save(self, root: str, extra: dict[str, Any], keep_last: int, export_hf: bool) -> str:
        """Write ``<root>/step_<n>`` (see ``learner.checkpoint``) with rank 0's ``extra`` state
        and the scheduler; optionally an HF export. Collective."""
        meta = {
            **extra,
            "step": self.step,
            "skipped": self.skipped,
            "world": self.world,
            "scheduler": self.scheduler.state_dict(),
        }
        return save_checkpoint(
            root,
            f"step_{self.step:08d}",
            self.model,
            self.optimizer,
            meta,
            keep_last,
            self.control,
            self._export_hf if export_hf else None,
        )

    def load(self, path: str) -> dict[str, Any]:
        """Restore a checkpoint written by ``save``; returns rank 0's extra state. Collective."""
        meta = load_checkpoint(path, self.model, self.optimizer)
        self.scheduler.load_state_dict(meta["scheduler"])
        self.step, self.skipped = int(meta["step"]), int(meta.get("skipped", 0))
        return meta

    def _export_hf(self, out: str) -> None:
        """``out``: the HF folder (LoRA merged in); with LoRA also ``adapter/`` beside it."""
        lora = self.cfg.learner.lora
        gathered = self._gather(None, False)
        if self.rank != 0:
            return
        base = str(self.cfg.model.path)
        if lora is None:
            write_hf_folder(gathered, out, base)
            return
        from learner.lora import merge_adapters, scale, write_adapter

        write_hf_folder(merge_adapters(gathered, scale(lora)), out, base)
        write_adapter(gathered, os.path.join(os.path.dirname(out), "adapter"), lora, base)


__all__ = ["StepResult", "Trainer", "init_distributed", "rank_device", "train_backend"]
