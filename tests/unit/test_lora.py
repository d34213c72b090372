"""LoRA's merge, by hand and against PEFT's own layers, and the adapter PEFT loads back."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from common.config import LoraConfig
from learner.lora import adapter_tensors, add_adapters, merge_adapters, write_adapter


def test_merge_by_hand():
    state = {
        "m.q_proj.base_layer.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),  # W [out 2, in 2]
        "m.q_proj.base_layer.bias": torch.tensor([0.5, -0.5]),
        "m.q_proj.lora_A.default.weight": torch.tensor([[1.0, 0.0]]),  # A [r 1, in 2]
        "m.q_proj.lora_B.default.weight": torch.tensor([[1.0], [2.0]]),  # B [out 2, r 1]
        "m.norm.weight": torch.tensor([1.0, 1.0]),
    }
    merged = merge_adapters(state, 2.0)  # W + 2 B A = [[1 + 2, 2], [3 + 4, 4]]
    assert set(merged) == {"m.q_proj.weight", "m.q_proj.bias", "m.norm.weight"}
    assert torch.equal(merged["m.q_proj.weight"], torch.tensor([[3.0, 2.0], [7.0, 4.0]]))
    assert torch.equal(merged["m.q_proj.bias"], state["m.q_proj.base_layer.bias"])


def tiny_lm(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
    )  # fmt: skip
    return Qwen2ForCausalLM(cfg).eval()


def adapted(cfg: LoraConfig) -> Qwen2ForCausalLM:
    lm = tiny_lm()
    trainable = add_adapters(lm, cfg)
    assert trainable == sum(p.numel() for n, p in lm.named_parameters() if "lora_" in n)
    with torch.no_grad():  # B starts at 0: give the adapters something to say
        for name, param in lm.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    return lm


def test_merged_weights_serve_what_the_adapted_model_computes():
    cfg = LoraConfig(rank=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    lm = adapted(cfg)
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        want = lm(ids).logits
        base = tiny_lm()
        base.load_state_dict(merge_adapters(lm.state_dict(), cfg.alpha / cfg.rank))
        got = base(ids).logits
        plain = tiny_lm()(ids).logits
    assert (got - want).abs().max() < 1e-5
    assert (plain - want).abs().max() > 1e-2  # the adapters did change the model


def test_the_adapter_loads_back_with_peft(tmp_path):
    from peft import PeftModel

    cfg = LoraConfig(rank=2, alpha=4, target_modules=["q_proj", "gate_proj"])
    lm = adapted(cfg)
    assert all(k.startswith("base_model.model.") for k in adapter_tensors(lm.state_dict()))
    write_adapter(lm.state_dict(), str(tmp_path / "adapter"), cfg, "base-model-path")
    loaded = PeftModel.from_pretrained(tiny_lm(), str(tmp_path / "adapter")).eval()
    ids = torch.randint(0, 64, (1, 7))
    with torch.no_grad():
        assert (loaded(ids).logits - lm(ids).logits).abs().max() < 1e-5


def test_only_the_adapters_train_and_unknown_targets_are_named():
    lm = tiny_lm()
    add_adapters(lm, LoraConfig(rank=2, target_modules=["o_proj"]))
    assert {n for n, p in lm.named_parameters() if p.requires_grad} == {
        f"model.layers.{i}.self_attn.o_proj.lora_{ab}.default.weight"
        for i in range(2)
        for ab in "AB"
    }
    with pytest.raises(ValueError, match=r"\['qkv'\] name no linear layer.*'q_proj'"):
        add_adapters(tiny_lm(), LoraConfig(target_modules=["qkv"]))
