"""FSDP2 training of the policy with LUFFY's objective.

Parts and ownership:
- ``PolicyLogprobs``: an ``nn.Module`` around the HF causal LM whose forward returns, for the
  response tokens only, log p(token) and the entropy, computed chunk by chunk under activation
  checkpointing so the float32 logits of the whole micro-batch ([tokens, vocab]) never exist
  at once. It is the FSDP root; every decoder layer is its own FSDP unit.
- ``Trainer`` (one per rank) owns the sharded model, the AdamW optimizer and the LR schedule.
  ``train_step`` splits the batch into micro-batches by token budget (the same number on every
  rank: FSDP's collectives need it), accumulates gradients, clips, and skips (counts) a step
  whose loss or gradient is not finite, leaving the weights untouched.
- ``plan_microbatches`` / ``plan_shared_microbatches`` are the pure planners of that split;
  ``collate`` / ``collate_shared`` turn a micro-batch into tensors (one row per sample, or
  each distinct prompt once with its samples' responses run against its cached keys/values:
  ``learner.share_prompts``).

Rank 0 drives: it calls the collective methods (``train_step``, ``full_state_dict``,
``save``/``load``) through ``Trainer.run`` so the other ranks, which sit in ``follow``, call
them too, with the same arguments broadcast over a gloo control group.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from common.config import Config
from learner.algorithms import ObjectiveConfig, loss_denominator, token_losses
from learner.batch import Sample, TrainBatch

log = logging.getLogger(__name__)
LOGIT_CHUNK = 1024  # response tokens per chunk of float32 logits


# --------------------------------------------------------------------------- distributed


def init_distributed(backend: str) -> tuple[int, int]:
    """Join torchrun's group (RANK/WORLD_SIZE in env) or make a group of one."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend)
    else:
        from common.net import free_port

        dist.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
        )
    return dist.get_rank(), dist.get_world_size()


def train_backend(sync_backend: str) -> str:
    return "nccl" if torch.cuda.is_available() and sync_backend != "gloo" else "gloo"


# --------------------------------------------------------------------------- model


def _chunk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
    logits = (hidden @ weight.t()).float()
    logz = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets[:, None])[:, 0] - logz
    probs = torch.softmax(logits, dim=-1)
    entropy = logz - (probs * logits).sum(-1)
    return logp, entropy


class PolicyLogprobs(nn.Module):
    """forward(batch) -> (logp [T], entropy [T]) for the ``T`` response tokens of a micro-batch.

    ``batch`` is what ``collate`` makes (input_ids / attention_mask [B, L]; positions [T], flat
    indices into B*L of the positions that predict a response token; targets [T]) or what
    ``collate_shared`` makes (each distinct prompt once, [P, Lp], its key/value cache reused by
    the responses [B, Lr] of the samples that share it; positions [T] index the P prompts' last
    states followed by the B*Lr response states)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, batch: dict[str, torch.Tensor]):
        hidden = self._states(batch)[batch["positions"]]
        targets = batch["targets"]
        weight = self.lm.lm_head.weight
        logps, entropies = [], []
        for start in range(0, hidden.shape[0], LOGIT_CHUNK):
            end = start + LOGIT_CHUNK
            lp, ent = checkpoint(
                _chunk_logprobs, hidden[start:end], weight, targets[start:end], use_reentrant=False
            )
            logps.append(lp)
            entropies.append(ent)
        if not logps:
            # a padding micro-batch: every parameter, the LM head included, must still get a
            # (zero) gradient, or this rank's reduce-scatter differs in size from the others'
            empty = ((hidden.sum() + weight.sum()) * 0.0).expand(0)
            return empty, empty
        return torch.cat(logps), torch.cat(entropies)

    def _states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Final hidden states, flat [N, H], in the index space of ``batch["positions"]``."""
        if "prompt_of" not in batch:
            out = self.lm.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            )
            return out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])
        prompt = self.lm.model(
            input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"], use_cache=True
        )
        cache = prompt.past_key_values
        cache.batch_select_indices(batch["prompt_of"])  # indexing: gradients sum back per prompt
        mask = torch.cat([batch["prompt_mask"][batch["prompt_of"]], batch["response_mask"]], 1)
        out = self.lm.model(
            input_ids=batch["response_ids"],
            attention_mask=mask,
            position_ids=batch["response_positions"],
            past_key_values=cache,
        )
        rows = torch.arange(batch["prompt_ids"].shape[0], device=batch["prompt_ids"].device)
        last = prompt.last_hidden_state[rows, batch["prompt_last"]]
        return torch.cat([last, out.last_hidden_state.reshape(-1, last.shape[-1])])


def build_model(cfg: Config, device: torch.device) -> PolicyLogprobs:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.float32).to(device)
    if cfg.learner.activation_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.config.use_cache = False
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    kwargs: dict[str, Any] = {"mesh": mesh}
    if cfg.learner.bf16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32
        )
    for layer in lm.model.layers:
        fully_shard(layer, **kwargs)
    policy = PolicyLogprobs(lm)
    fully_shard(policy, **kwargs)
    return policy


# --------------------------------------------------------------------------- micro-batches


def _pack(units: list[list[int]], cost, fits, world: int) -> list[list[list[int]]]:
    """Deal ``units`` (lists of sample indices kept together), most costly first, to the
    least loaded of ``world`` ranks; on each rank, join consecutive units into one micro-batch
    while ``fits(units)``; pad every rank with empty micro-batches to the same count (a rank
    with nothing to do still takes part in FSDP's collectives)."""
    ranks: list[list[list[int]]] = [[] for _ in range(world)]
    load = [0] * world
    for unit in sorted(units, key=cost, reverse=True):  # stable: ties keep their order
        r = load.index(min(load))
        ranks[r].append(unit)
        load[r] += cost(unit)
    plans = []
    for rank_units in ranks:
        micro: list[list[list[int]]] = []
        for unit in rank_units:
            if micro and fits([*micro[-1], unit]):
                micro[-1].append(unit)
            else:
                micro.append([unit])
        plans.append([[i for unit in m for i in unit] for m in micro])
    depth = max(1, max(len(p) for p in plans))
    return [p + [[] for _ in range(depth - len(p))] for p in plans]


def plan_microbatches(lengths: list[int], token_budget: int, world: int) -> list[list[list[int]]]:
    """Split sample indices into ``world`` ranks x the same number of micro-batches each, where
    a micro-batch's padded size (longest x count) stays within ``token_budget`` (a sample longer
    than the budget goes alone). Ranks are balanced by tokens; an empty list is a padding
    micro-batch."""

    def fits(units: list[list[int]]) -> bool:
        return max(lengths[u[0]] for u in units) * len(units) <= token_budget

    return _pack([[i] for i in range(len(lengths))], lambda u: lengths[u[0]], fits, world)


def plan_shared_microbatches(
    prompt_keys: list[object],
    prompt_lens: list[int],
    response_lens: list[int],
    token_budget: int,
    world: int,
) -> list[list[list[int]]]:
    """``plan_microbatches`` for prompt sharing: samples with the same prompt key stay in one
    micro-batch (their prompt is encoded once there). A micro-batch's padded size is
    prompts x longest prompt + samples x longest response; a group too big for the budget is cut
    into pieces that fit (a piece of one sample may exceed it). Ranks balanced by size."""
    groups: dict[object, list[int]] = {}
    for i, key in enumerate(prompt_keys):
        groups.setdefault(key, []).append(i)
    units: list[list[int]] = []
    for items in groups.values():
        items.sort(key=lambda i: -response_lens[i])
        plen = prompt_lens[items[0]]
        piece: list[int] = []
        for i in items:  # longest first, so the first of a piece is its longest
            if piece and plen + response_lens[piece[0]] * (len(piece) + 1) > token_budget:
                units.append(piece)
                piece = []
            piece.append(i)
        units.append(piece)

    def size(pieces: list[list[int]]) -> int:
        samples = [i for piece in pieces for i in piece]
        longest_prompt = max(prompt_lens[i] for i in samples)
        return len(pieces) * longest_prompt + len(samples) * max(response_lens[i] for i in samples)

    return _pack(units, lambda u: size([u]), lambda us: size(us) <= token_budget, world)


def prompt_key(sample: Sample) -> tuple[int, ...]:
    return tuple(sample.input_ids[: sample.prompt_len])


def _token_fields(samples: list[Sample], device: torch.device) -> dict[str, torch.Tensor]:
    """[T] per-response-token tensors: targets, behaviour log-probs, advantages, off flags."""
    targets, behav, adv, off = [], [], [], []
    for s in samples:
        targets += s.input_ids[s.prompt_len :]
        behav += s.behav_logprobs
        adv += [s.advantage] * s.response_len
        off += [s.off_policy] * s.response_len
    return {
        "targets": torch.tensor(targets, dtype=torch.long, device=device),
        "behav": torch.tensor(behav, dtype=torch.float32, device=device),
        "adv": torch.tensor(adv, dtype=torch.float32, device=device),
        "off": torch.tensor(off, dtype=torch.bool, device=device),
    }


def _right_padded(rows: list[list[int]], pad_id: int):
    """[len(rows), max(1, longest)] ids and 0/1 mask."""
    width = max(1, max((len(r) for r in rows), default=0))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, tokens in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
    return ids, mask


def collate(samples: list[Sample], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded tensors for one micro-batch, one row per sample; response positions
    flattened. An empty list is a padding micro-batch (two pad tokens, no response)."""
    if not samples:
        ids = torch.full((1, 2), pad_id, dtype=torch.long)
        return {
            "input_ids": ids.to(device),
            "attention_mask": torch.ones_like(ids).to(device),
            "positions": torch.zeros(0, dtype=torch.long, device=device),
            **_token_fields([], device),
        }
    ids, mask = _right_padded([s.input_ids for s in samples], pad_id)
    width, positions = ids.shape[1], []
    for row, s in enumerate(samples):
        # position p predicts token p + 1: response tokens are prompt_len .. n - 1
        positions += [row * width + p for p in range(s.prompt_len - 1, len(s.input_ids) - 1)]
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "positions": torch.tensor(positions, dtype=torch.long, device=device),
        **_token_fields(samples, device),
    }


def collate_shared(
    samples: list[Sample], pad_id: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """One row per distinct prompt and one per response (``PolicyLogprobs`` reuses a prompt's
    key/value cache for its responses). The first response token is predicted by its prompt's
    last state (index ``prompt row``), token j > 0 by response state j - 1 (index
    ``P + row * Lr + j - 1``). An empty list is a padding micro-batch."""
    rows: dict[tuple[int, ...], int] = {}
    prompt_of = [rows.setdefault(prompt_key(s), len(rows)) for s in samples]
    prompts = list(rows) or [(pad_id,)]
    prompt_ids, prompt_mask = _right_padded([list(p) for p in prompts], pad_id)
    responses = [s.input_ids[s.prompt_len :] for s in samples] or [[]]
    response_ids, response_mask = _right_padded(responses, pad_id)
    n_prompts, width = len(prompts), response_ids.shape[1]
    prompt_lens = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    of = torch.tensor(prompt_of or [0], dtype=torch.long)
    positions = []
    for row, (p, s) in enumerate(zip(prompt_of, samples, strict=True)):
        if s.response_len:
            positions.append(p)
            positions += [n_prompts + row * width + j for j in range(s.response_len - 1)]
    return {
        "prompt_ids": prompt_ids.to(device),
        "prompt_mask": prompt_mask.to(device),
        "prompt_last": (prompt_lens - 1).to(device),
        "prompt_of": of.to(device),
        "response_ids": response_ids.to(device),
        "response_mask": response_mask.to(device),
        "response_positions": (prompt_lens[of][:, None] + torch.arange(width)).to(device),
        "positions": torch.tensor(positions, dtype=torch.long, device=device),
        **_token_fields(samples, device),
    }


# --------------------------------------------------------------------------- trainer


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


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.rank, self.world = init_distributed(train_backend(cfg.sync.backend))
        self.control = dist.new_group(backend="gloo")  # object broadcasts, whatever the backend
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if (torch.cuda.is_available() and dist.get_backend() == "nccl")
            else torch.device("cpu")
        )
        torch.manual_seed(cfg.run.seed)
        self.model = build_model(cfg, self.device)
        lc = cfg.learner
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=lc.lr, betas=lc.betas, weight_decay=lc.weight_decay
        )
        warmup = lc.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
        )
        a = cfg.algorithm
        self.objective = ObjectiveConfig(
            a.mode, a.clip, a.clip_eps, a.shaping, a.gamma, a.decoupled, a.is_cap, a.sft_coef
        )
        self.pad_id = int(getattr(self.model.lm.config, "pad_token_id", None) or 0)
        self.share_prompts = lc.share_prompts and not lc.activation_checkpointing
        if lc.share_prompts and lc.activation_checkpointing:
            log.info("learner.share_prompts is off: activation checkpointing drops the KV cache")
        self.step = 0
        self.skipped = 0

    # ---------------------------------------------------------------- driving other ranks

    def run(self, method: str, *args: Any) -> Any:
        """On rank 0: make every rank call ``method(*args)`` (rank 0's args win)."""
        if self.world > 1:
            msg = [(method, args)]
            dist.broadcast_object_list(msg, src=0, group=self.control)
        return getattr(self, method)(*args)

    def follow(self) -> None:
        """On ranks > 0: execute rank 0's calls until it sends ``stop``."""
        while True:
            msg: list[Any] = [None]
            dist.broadcast_object_list(msg, src=0, group=self.control)
            method, args = msg[0]
            if method == "stop":
                return
            getattr(self, method)(*args)

    def stop_followers(self) -> None:
        if self.world > 1:
            dist.broadcast_object_list([("stop", ())], src=0, group=self.control)

    # ---------------------------------------------------------------- the step

    def train_step(self, batch: TrainBatch) -> StepResult:
        started = time.perf_counter()
        samples = batch.samples
        plan = self._plan(samples)[self.rank]
        n_tokens = sum(s.response_len for s in samples)
        denom = loss_denominator(
            self.cfg.algorithm.loss_agg, len(samples), n_tokens, self.cfg.algorithm.max_response_len
        )
        totals = torch.zeros(5, dtype=torch.float64)  # on, off, sft, entropy sum, tokens
        self.model.train()
        for micro in plan:
            totals += self._micro_step([samples[i] for i in micro], denom, max(1, n_tokens))
        dist.all_reduce(totals, group=self.control)
        grad_norm = self._grad_norm()
        loss_sum = float(totals[:3].sum()) / denom
        entropy = float(totals[3]) / max(1.0, float(totals[4]))
        loss = loss_sum - self.cfg.algorithm.entropy_coef * entropy
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
            self.step,
            skipped,
            loss,
            parts,
            entropy,
            grad_norm,
            int(totals[4]),
            time.perf_counter() - started,
            self.scheduler.get_last_lr()[0],
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
        parts = token_losses(self.objective, logp, batch["behav"], batch["adv"], batch["off"])
        total = parts["on"].sum() + parts["off"].sum() + parts["sft"].sum()
        # FSDP averages gradients over ranks: scale so the sum over ranks is the batch loss
        loss = total / denom - self.cfg.algorithm.entropy_coef * entropy.sum() / n_tokens
        (loss * self.world).backward()
        with torch.no_grad():
            return torch.tensor(
                [
                    float(parts["on"].sum()),
                    float(parts["off"].sum()),
                    float(parts["sft"].sum()),
                    float(entropy.sum()),
                    float(logp.numel()),
                ],
                dtype=torch.float64,
            )

    def _grad_norm(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.learner.grad_clip)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    # ---------------------------------------------------------------- weights out

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Full (unsharded) HF-named tensors, on CPU, on rank 0 (empty elsewhere). Collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return {k.removeprefix("lm."): v for k, v in full.items()} if self.rank == 0 else {}

    # ---------------------------------------------------------------- checkpoints

    def save(self, root: str, extra: dict[str, Any], keep_last: int, export_hf: bool) -> str:
        """Write ``<root>/step_<n>`` atomically: sharded model + optimizer (DCP), per-rank RNG,
        and rank 0's ``extra`` state with the scheduler; optionally an HF export. Collective."""
        import json
        import shutil

        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        final = os.path.join(root, f"step_{self.step:08d}")
        tmp = os.path.join(root, f".tmp-step_{self.step:08d}")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        dist.barrier(group=self.control)
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
        torch.save(torch.get_rng_state(), os.path.join(tmp, f"rng_rank{self.rank}.pt"))
        if export_hf:
            self._export_hf(os.path.join(tmp, "hf"))
        dist.barrier(group=self.control)
        if self.rank == 0:
            meta = {
                **extra,
                "step": self.step,
                "skipped": self.skipped,
                "world": self.world,
                "scheduler": self.scheduler.state_dict(),
            }
            with open(os.path.join(tmp, "meta.json"), "w") as fh:
                json.dump(meta, fh)
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)  # the checkpoint exists only once it is complete
            for old in list_checkpoints(root)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier(group=self.control)
        return final

    def load(self, path: str) -> dict[str, Any]:
        """Restore a checkpoint written by ``save``; returns rank 0's extra state. Collective."""
        import json

        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        with open(os.path.join(path, "meta.json")) as fh:
            meta = json.load(fh)
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
        )
        self.scheduler.load_state_dict(meta["scheduler"])
        self.step, self.skipped = int(meta["step"]), int(meta.get("skipped", 0))
        rng = os.path.join(path, f"rng_rank{self.rank}.pt")
        if os.path.exists(rng):
            torch.set_rng_state(torch.load(rng))
        return meta

    def _export_hf(self, out: str) -> None:
        """Full weights as safetensors beside the model's config and tokenizer files."""
        import shutil

        from safetensors.torch import save_file

        full = self.full_state_dict()
        if self.rank != 0:
            return
        os.makedirs(out, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in full.items()},
            os.path.join(out, "model.safetensors"),
            metadata={"format": "pt"},
        )
        for name in os.listdir(self.cfg.model.path):
            if name.endswith((".json", ".jinja", ".txt", ".model")) and "index" not in name:
                shutil.copy(os.path.join(self.cfg.model.path, name), out)


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
    "PolicyLogprobs",
    "StepResult",
    "Trainer",
    "collate",
    "collate_shared",
    "init_distributed",
    "list_checkpoints",
    "plan_microbatches",
    "plan_shared_microbatches",
    "prompt_key",
]
