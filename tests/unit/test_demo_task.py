"""The synthetic tasks (``services.demo.tiny_task``): every worked trace earns reward 1 under
the math rule, the addition trace's steps are the right arithmetic, held-out prompts never
appear in training, and ``luffy up`` writes the configured kind."""

import json
import random
import re

import pytest

from common.config import load_config
from services.demo import ensure_task
from services.demo.tiny_task import PROBLEMS, make_addition_problem, make_task
from verifier.rewards import math_reward


@pytest.mark.parametrize("kind", sorted(PROBLEMS))
def test_every_trace_is_rewarded_and_held_out_prompts_are_unseen(tmp_path, kind):
    make_task(tmp_path, n_train=300, n_eval=40, seed=1, kind=kind)
    rows = {s: [json.loads(x) for x in (tmp_path / f"{s}.jsonl").open()] for s in ("train", "eval")}
    assert len(rows["train"]) == 300 and len(rows["eval"]) == 40
    assert not {r["prompt"] for r in rows["eval"]} & {r["prompt"] for r in rows["train"]}
    for row in rows["train"][:50] + rows["eval"]:
        assert row["data_source"] == kind
        assert math_reward(row["target"], row["answer"]).reward == 1.0, row


def test_the_addition_trace_adds_digit_by_digit():
    rng = random.Random(3)
    for _ in range(500):
        row = make_addition_problem(rng)
        a, b = map(int, re.findall(r"\d+", row["prompt"]))
        ones = a % 10 + b % 10
        assert row["answer"] == str(a + b)
        assert f"Ones: {a % 10} + {b % 10} = {ones}" in row["target"]
        assert ("carry 1" in row["target"]) == (ones >= 10)
        assert f"= {a // 10 + b // 10 + ones // 10}. So {a} + {b} = {a + b}." in row["target"]


def test_luffy_up_writes_the_configured_kind(tmp_path):
    train = tmp_path / "task" / "train.jsonl"
    overrides = ["--learner.train_file", str(train), "--learner.make_task_if_missing", "true"]
    ensure_task(load_config(overrides=[*overrides, "--learner.task_kind", "add"], environ={}))
    assert json.loads(train.open().readline())["data_source"] == "add"
