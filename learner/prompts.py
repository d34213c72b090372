"""What the policy sees: prompt templates and the token form of prompts and off-policy traces,
as LUFFY's released code builds them.

Templates (``model.template`` for training, ``luffy eval --template``):

- ``own``: the tokenizer's chat template over the data's turns (LUFFY's think-template models
  end the generation prompt with ``<think>\\n``). LUFFY's offline evaluation drops the data's
  system turn first (``drop_system``); its training and in-training validation keep it.
- ``qwen``: Qwen2.5-Math's system prompt and the question as the user turn.
- ``simplerl``: "You are a helpful assistant." and the question with SimpleRL's
  step-by-step instruction appended (kept exactly, including its doubled braces).
- ``prime``: PRIME's zero-RL conversation as plain text, no chat template.
- ``none``: the question text as it is.

The templated question is the first non-system turn, as LUFFY's evaluation takes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

THINK_OPEN = "<think>\n"
QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
SIMPLERL_SYSTEM = "You are a helpful assistant."
# SimpleRL's instruction as LUFFY's script writes it: a plain string with "{{}}" in it
SIMPLERL_SUFFIX = "\nPlease reason step by step, and put your final answer within\\boxed{{}}."
PRIME_CONVERSATION = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>. User: {question}. Assistant:"
)
PRIME_SUFFIX = "\n\nPresent the answer in LaTex format: \\boxed{Your answer}"
TEMPLATES = ("own", "qwen", "simplerl", "prime", "none")

Prompt = str | Sequence  # text, or ((role, content), ...)


def _turns(prompt: Prompt) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": r, "content": c} for r, c in prompt]


def question(prompt: Prompt) -> str:
    """The question: the first non-system turn (the text of a plain prompt)."""
    turns = [t for t in _turns(prompt) if t["role"] != "system"] or _turns(prompt)
    return turns[0]["content"]


def _chat(tokenizer: Any, turns: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def prompt_text(tokenizer: Any, prompt: Prompt, template: str, drop_system: bool = False) -> str:
    """The prompt as the policy reads it (see the module docstring for each template)."""
    if template == "own":
        turns = _turns(prompt)
        if drop_system:
            turns = [t for t in turns if t["role"] != "system"] or turns
        return _chat(tokenizer, turns)
    if template == "qwen":
        system = {"role": "system", "content": QWEN_MATH_SYSTEM}
        return _chat(tokenizer, [system, {"role": "user", "content": question(prompt)}])
    if template == "simplerl":
        user = {"role": "user", "content": question(prompt) + SIMPLERL_SUFFIX}
        return _chat(tokenizer, [{"role": "system", "content": SIMPLERL_SYSTEM}, user])
    if template == "prime":
        return PRIME_CONVERSATION.format(question=question(prompt) + PRIME_SUFFIX)
    if template == "none":
        return (
            prompt if isinstance(prompt, str) else "\n".join(t["content"] for t in _turns(prompt))
        )
    raise ValueError(f"unknown prompt template {template!r}; known: {', '.join(TEMPLATES)}")


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without added special tokens (a chat template's text already
    carries them; this is how ``apply_chat_template(tokenize=True)`` tokenizes)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(
    tokenizer: Any, prompt: Prompt, template: str, drop_system: bool = False
) -> list[int]:
    """Token ids of ``prompt_text``."""
    return text_ids(tokenizer, prompt_text(tokenizer, prompt, template, drop_system))


def trace_text(trace: str, prompt: str) -> str:
    """LUFFY drops the trace's leading ``<think>\\n`` when the templated prompt already ends
    with it (else a think-template model would see the tag twice)."""
    if prompt.endswith(THINK_OPEN) and trace.startswith(THINK_OPEN):
        return trace[len(THINK_OPEN) :]
    return trace


def trace_ids(tokenizer: Any, trace: str, prompt: str, max_tokens: int) -> list[int]:
    """The off-policy trace as LUFFY feeds it: ``trace_text`` tokenized, cut to ``max_tokens``
    (LUFFY's ``max_prefix_len``), EOS appended, and the response cut to ``max_tokens`` again,
    so a trace of ``max_tokens`` tokens or more loses its EOS."""
    ids = text_ids(tokenizer, trace_text(trace, prompt))[:max_tokens]
    return [*ids, tokenizer.eos_token_id][:max_tokens]


__all__ = [
    "TEMPLATES",
    "THINK_OPEN",
    "prompt_ids",
    "prompt_text",
    "question",
    "text_ids",
    "trace_ids",
    "trace_text",
]
