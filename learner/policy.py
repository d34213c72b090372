"""The policy as the learner trains it.

``PolicyLogprobs`` is an ``nn.Module`` around the HF causal LM whose forward returns, for the
response tokens only, log p(token) and the entropy, computed chunk by chunk under activation
checkpointing so the float32 logits of the whole micro-batch ([tokens, vocab]) never exist at
once. ``build_model`` loads the HF model and shards it with FSDP2: every decoder layer is its
own unit and ``PolicyLogprobs`` is the root.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from common.config import Config

LOGIT_CHUNK = 1024  # response tokens per chunk of float32 logits


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
    if cfg.learner.lora is not None:  # before sharding: FSDP2 shards the adapters too
        from common.shell import StartupError
        from learner.lora import add_adapters

        try:
            add_adapters(lm, cfg.learner.lora)
        except ValueError as exc:  # target modules this model does not have
            raise StartupError(str(exc)) from None
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


__all__ = ["LOGIT_CHUNK", "PolicyLogprobs", "build_model"]
