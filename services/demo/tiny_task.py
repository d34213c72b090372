"""The synthetic reasoning task shipped with the repo (``luffy make-task DIR``).

"Which number is last in: 4 9 2 7?" with a worked trace in the think-tag format,
"<think> The numbers are 4 9 2 7. The last one is 7. </think> \\boxed{7}", and the gold
answer "7". Held-out problems are fresh lists, so scoring well needs the procedure (find the
list, copy its last element), not memorised facts; a constant answer scores the share of
held-out answers that are that digit (~10%; 13 of the first 64, which the tiny config
evaluates, end in 0). An untrained tiny model almost never produces a correct, well-formed
answer, so on-policy GRPO gets next to no reward signal (0.02-0.07% of its samples right in
its first 300 steps), from which it learns, after ~500 steps, to answer one constant digit
(bench/README.md); LUFFY learns the procedure from the traces.

(With several ordinals, first/second/third/last, RL on the tiny model finds the shortcut
"always answer one fixed position", worth 25-30%, and stalls there: measured, not guessed.)

``pick2`` (``make_two_digit_problem``): the same question on two-digit numbers, each digit 1-9
(81 possible answers), "Which number is last in: 47 92 13 58?" -> "58". Its held-out answers
cycle through all 81, so a constant answer is worth at most 1 of every 81 prompts (1 of the
first 64): the variant on which GRPO's constant guess cannot pass 0.05. The tokenizer splits
numbers into single digits, so copying a number is copying two tokens; LUFFY learns it later
than ``pick`` (bench/README.md). With 0 allowed as a digit the tiny model copied a trailing 0
wrong on almost every prompt and LUFFY levelled off at 0.85-0.89, hence 1-9.

``add``: two-digit addition (``make_addition_problem``), for a real pretrained model.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ORDINALS = {"last": 3}
LIST_LEN = 4
# every two-digit number without a 0 digit, in a fixed order: pick2's answer classes
PICK2_ANSWERS = [10 * tens + ones for tens in range(1, 10) for ones in range(1, 10)]


def pick_row(numbers: list[int], word: str, source: str) -> dict[str, str]:
    """The question "Which number is <word> in: <numbers>?" with its gold answer and worked
    trace, for both pick kinds."""
    answer = numbers[ORDINALS[word]]
    listed = " ".join(map(str, numbers))
    return {
        "prompt": f"Which number is {word} in: {listed}?",
        "answer": str(answer),
        "target": f"<think> The numbers are {listed}. The {word} one is {answer}. </think> "
        f"\\boxed{{{answer}}}",
        "data_source": source,
    }


def make_problem(rng: random.Random) -> dict[str, str]:
    digits = [rng.randint(0, 9) for _ in range(LIST_LEN)]
    return pick_row(digits, rng.choice(list(ORDINALS)), "pick")


def make_two_digit_problem(rng: random.Random, last: int | None = None) -> dict[str, str]:
    """One ``pick2`` problem: ``LIST_LEN`` numbers from ``PICK2_ANSWERS``; ``last`` fixes the
    answer (the held-out set's balance), else it is drawn like the others."""
    numbers = [rng.choice(PICK2_ANSWERS) for _ in range(LIST_LEN)]
    if last is not None:
        if last not in PICK2_ANSWERS:
            raise ValueError(f"last={last} is not a pick2 answer (two digits, each 1-9)")
        numbers[-1] = last
    return pick_row(numbers, "last", "pick2")


def make_addition_problem(rng: random.Random) -> dict[str, str]:
    """Two-digit addition with a digit-by-digit trace: a task a small pretrained model gets
    partly right on its own, so on-policy samples earn some reward beside the traces."""
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    ones = a % 10 + b % 10
    tens = a // 10 + b // 10 + ones // 10
    carry = f"write {ones % 10}, carry 1" if ones >= 10 else f"write {ones}"
    return {
        "prompt": f"What is {a} + {b}?",
        "answer": str(a + b),
        "target": f"<think> Ones: {a % 10} + {b % 10} = {ones}, {carry}. Tens: "
        f"{a // 10} + {b // 10}{' + 1' if ones >= 10 else ''} = {tens}. So {a} + {b} = "
        f"{a + b}. </think> \\boxed{{{a + b}}}",
        "data_source": "add",
    }


PROBLEMS = {"pick": make_problem, "pick2": make_two_digit_problem, "add": make_addition_problem}


def make_task(
    out_dir: str | Path, n_train: int = 4000, n_eval: int = 200, seed: int = 0, kind: str = "pick"
) -> Path:
    """Write ``train.jsonl`` and ``eval.jsonl`` (disjoint prompts) of the ``kind`` task
    (``PROBLEMS``) into ``out_dir``. A ``pick2`` held-out set's answers cycle through
    ``PICK2_ANSWERS`` in a seeded order: every answer as often as any other, give or take one."""
    if kind not in PROBLEMS:
        raise ValueError(f"unknown task kind {kind!r}; known: {sorted(PROBLEMS)}")
    problem = PROBLEMS[kind]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    balance = rng.sample(PICK2_ANSWERS, len(PICK2_ANSWERS)) if kind == "pick2" else None
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {"eval": [], "train": []}
    for split, count in (("eval", n_eval), ("train", n_train)):
        rows = splits[split]
        while len(rows) < count:
            if split == "eval" and balance is not None:
                row = make_two_digit_problem(rng, last=balance[len(rows) % len(balance)])
            else:
                row = problem(rng)
            if row["prompt"] in seen:
                continue  # held-out prompts never appear in training, nor twice
            seen.add(row["prompt"])
            rows.append({"id": f"{split}-{len(rows)}", **row})
    for split, rows in splits.items():
        with (out / f"{split}.jsonl").open("w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    return out


def corpus(n: int = 2000, seed: int = 0, kind: str = "pick") -> list[str]:
    """Text to train the tiny tokenizer on: the ``kind`` task's prompts and traces,
    chat-formatted."""
    problem = PROBLEMS[kind]
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        row = problem(rng)
        lines.append(f"<|im_start|>user\n{row['prompt']}<|im_end|>\n<|im_start|>assistant\n")
        lines.append(row["target"])
    return lines


__all__ = [
    "PROBLEMS",
    "corpus",
    "make_addition_problem",
    "make_problem",
    "make_task",
    "make_two_digit_problem",
]
