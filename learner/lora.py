"""LoRA adapters on the policy (``learner.lora``), with PEFT's layers.

- ``add_adapters`` puts a LoRA layer on each target linear layer of the HF model in place
  (PEFT's ``inject_adapter_in_model``) and freezes everything else, before FSDP2 shards it.
- ``merge_adapters`` is the pure function the weight push and the HF export use: the trained
  state (PEFT's names: ``...q_proj.base_layer.weight``, ``...q_proj.lora_A.default.weight``)
  becomes the plain model's (``...q_proj.weight`` = W + scale x B A), so vLLM and transformers
  load it as any checkpoint of the base architecture.
- ``adapter_tensors`` / ``write_adapter`` save the adapter alone in PEFT's format
  (``adapter_model.safetensors`` + ``adapter_config.json``), which ``PeftModel.from_pretrained``
  loads onto the base model.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from common.config import LoraConfig

ADAPTER = "default"  # PEFT's adapter name inside the layers
BASE, LORA_A, LORA_B = ".base_layer.", f".lora_A.{ADAPTER}.weight", f".lora_B.{ADAPTER}.weight"


def scale(cfg: LoraConfig) -> float:
    return cfg.alpha / cfg.rank


def add_adapters(lm: torch.nn.Module, cfg: LoraConfig) -> int:
    """Adapters on ``cfg.target_modules`` of ``lm`` (in place); returns the trainable
    parameter count. A target list that matches no layer is an error naming the layers."""
    import peft

    linear = sorted({n.rsplit(".", 1)[-1] for n, m in lm.named_modules() if _is_linear(m)})
    missing = [t for t in cfg.target_modules if t not in linear]
    if missing:
        raise ValueError(
            f"learner.lora.target_modules {missing} name no linear layer of this model "
            f"(its linear layers: {linear})"
        )
    peft.inject_adapter_in_model(peft_config(cfg), lm)
    for name, param in lm.named_parameters():  # only the adapters learn
        param.requires_grad = "lora_" in name
    return sum(p.numel() for p in lm.parameters() if p.requires_grad)


def peft_config(cfg: LoraConfig, **extra: Any) -> Any:
    """PEFT's LoraConfig for ours (``extra``: fields of the saved adapter's config)."""
    import peft

    return peft.LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        target_modules=list(cfg.target_modules),
        lora_dropout=cfg.dropout,
        bias="none",
        **extra,
    )


def _is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear)


def merge_adapters(state: dict[str, torch.Tensor], s: float) -> dict[str, torch.Tensor]:
    """The base model's state with every adapter merged: for a layer with ``base_layer.weight``
    W [out, in], ``lora_A`` A [r, in] and ``lora_B`` B [out, r], ``<layer>.weight`` =
    W + s x (B @ A) (computed in float32, returned in W's dtype); ``base_layer.bias`` becomes
    ``<layer>.bias``; adapter tensors are dropped; everything else passes unchanged."""
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if LORA_A in name or LORA_B in name:
            continue
        if BASE not in name:
            out[name] = value
            continue
        layer, _, leaf = name.partition(BASE)
        merged = value
        if leaf == "weight" and layer + LORA_A in state:
            a, b = state[layer + LORA_A].float(), state[layer + LORA_B].float()
            merged = (value.float() + s * (b @ a)).to(value.dtype)
        out[f"{layer}.{leaf}"] = merged
    return out


def adapter_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter alone under PEFT's saved names (``base_model.model.<layer>.lora_A.weight``)."""
    return {
        "base_model.model." + name.replace(f".{ADAPTER}.weight", ".weight"): value.contiguous()
        for name, value in state.items()
        if LORA_A in name or LORA_B in name
    }


def write_adapter(state: dict[str, torch.Tensor], out: str, cfg: LoraConfig, base: str) -> None:
    """``out``/adapter_model.safetensors and adapter_config.json, as PEFT's
    ``save_pretrained`` writes them, for the base model at ``base``."""
    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    save_file(
        adapter_tensors(state),
        os.path.join(out, "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
    peft_cfg = peft_config(cfg, base_model_name_or_path=base, task_type="CAUSAL_LM")
    with open(os.path.join(out, "adapter_config.json"), "w") as fh:
        json.dump(_jsonable(peft_cfg.to_dict()), fh, indent=2)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, set):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


__all__ = ["adapter_tensors", "add_adapters", "merge_adapters", "scale", "write_adapter"]
