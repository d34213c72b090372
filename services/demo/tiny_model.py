"""A tiny Qwen2 causal LM and a fast BPE tokenizer, built offline and deterministically.

``build_tiny_model`` trains a byte-level BPE tokenizer (``tokenizers``) on a corpus, adds the
chat special tokens and a chat template, initialises a Qwen2 model from ``seed`` and saves both
as a normal HF folder (config.json, model.safetensors, tokenizer.json, ...) that transformers
and vLLM load. The same seed, shape and corpus give byte-identical files.

transformers (5.x) loads the folder as ``Qwen2Tokenizer`` (from config.json's model type), whose
pre-tokenizer splits numbers into single digits (Qwen2's rule) whatever tokenizer.json's
byte-level rule says: "59" is ' ', '5', '9' for the learner and vLLM alike, while the
``tokenizers`` library reading tokenizer.json alone gives the merged ' 59'. Every part of the
stack loads through transformers, so they agree; the merges learned for numbers go unused.

torch and transformers are imported inside the functions (the CLI imports this module).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from common.config import TinyModelConfig

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK_TOKENS = ["<think>", "</think>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
WORDS = (
    "the answer is what compute add subtract multiply sum of and then so we get first next "
    "let step total result number value find question solve therefore check carry boxed"
).split()


def synthetic_corpus(n: int = 2000, seed: int = 0) -> list[str]:
    """Arithmetic questions with worked traces in the think-tag format, plus plain words."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice("+-*")
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        lines.append(
            f"What is {a} {op} {b}? <think> {a} {op} {b} = {value} </think> "
            f"The answer is \\boxed{{{value}}}."
        )
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))))
    lines.append("".join(chr(c) for c in range(32, 127)))
    return lines


def train_tokenizer(corpus: Iterable[str], vocab_size: int):
    """Byte-level BPE with the chat special tokens; returns a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    fast.add_tokens(THINK_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(
    out_dir: str | Path,
    shape: TinyModelConfig | None = None,
    seed: int = 0,
    corpus: Sequence[str] | None = None,
    task_kind: str = "pick",
) -> Path:
    """Write a tiny Qwen2 model + tokenizer to ``out_dir``; returns the folder. The tokenizer
    is trained on ``corpus`` or, by default, the synthetic corpus plus the ``task_kind`` task's
    text."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    shape = shape or TinyModelConfig()
    if shape.hidden_size % shape.num_heads or shape.num_heads % shape.num_kv_heads:
        raise ValueError(
            f"hidden_size {shape.hidden_size} must divide by num_heads {shape.num_heads}, "
            f"and num_heads by num_kv_heads {shape.num_kv_heads}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if corpus is None:
        from services.demo.tiny_task import corpus as task_corpus

        corpus = synthetic_corpus(seed=seed) + task_corpus(seed=seed, kind=task_kind)
    tokenizer = train_tokenizer(corpus, shape.vocab_size)
    eos, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=False,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=pad,
        torch_dtype="float32",
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    # explicit re-initialisation from our own generator: independent of global RNG use
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    model.generation_config = GenerationConfig(
        eos_token_id=[eos, pad], pad_token_id=pad, bos_token_id=pad
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "luffy_tiny.json").write_text(
        json.dumps({"seed": seed, "shape": shape.model_dump()}, indent=2, sort_keys=True)
    )
    return out


__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "build_tiny_model",
    "synthetic_corpus",
    "train_tokenizer",
]
