"""The synthetic tasks (``services.demo.tiny_task``): every worked trace earns reward 1 under
the math rule, the addition trace's steps are the right arithmetic, held-out prompts never
appear in training, pick2's held-out answers are balanced (a constant answer is worth
1 in 81), and ``luffy up`` writes the configured kind
and refuses a folder holding another."""

import json
import random
import re

import pytest

from common.config import load_config
from services.demo import ensure_task
from services.demo.tiny_task import (
    PICK2_ANSWERS,
    PROBLEMS,
    make_addition_problem,
    make_task,
    make_two_digit_problem,
)
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


def test_pick2_held_out_answers_are_balanced_so_a_constant_is_worth_one_in_81(tmp_path):
    make_task(tmp_path, n_train=200, n_eval=200, seed=2, kind="pick2")
    rows = [json.loads(x) for x in (tmp_path / "eval.jsonl").open()]
    answers = [r["answer"] for r in rows]
    assert len(PICK2_ANSWERS) == 81 and all("0" not in str(a) for a in PICK2_ANSWERS)
    assert set(answers) == {str(a) for a in PICK2_ANSWERS}
    # the tiny config evaluates the first 64: no answer twice there, 2-3 times in all 200
    assert max(map(answers[:64].count, answers[:64])) == 1
    assert {answers.count(a) for a in set(answers)} == {2, 3}
    for row in rows:
        assert row["prompt"].endswith(f" {row['answer']}?"), row


def test_the_default_pick_task_is_the_measured_one(tmp_path):
    # bench/README.md's pick figures were measured on exactly these files (seed 0)
    make_task(tmp_path, n_train=10, n_eval=2, seed=0)
    first = json.loads((tmp_path / "eval.jsonl").open().readline())
    assert first["prompt"] == "Which number is last in: 6 6 0 4?" and first["answer"] == "4"


def test_pick2_refuses_an_answer_outside_its_classes_and_make_task_unknown_kinds(tmp_path):
    assert make_two_digit_problem(random.Random(0), last=58)["answer"] == "58"
    with pytest.raises(ValueError, match="last=50 is not a pick2 answer"):
        make_two_digit_problem(random.Random(0), last=50)
    with pytest.raises(ValueError, match="unknown task kind 'sum'"):
        make_task(tmp_path, kind="sum")


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
    # the same folder for another kind is refused, naming both kinds; the files stay as they are
    before = train.read_bytes()
    with pytest.raises(
        ValueError, match=r"holds the synthetic 'add' task but learner\.task_kind is 'pick2'"
    ):
        ensure_task(load_config(overrides=[*overrides, "--learner.task_kind", "pick2"], environ={}))
    assert train.read_bytes() == before
    ensure_task(load_config(overrides=[*overrides, "--learner.task_kind", "add"], environ={}))
