"""FSDP2 trainer on CPU: ranks, resume, NaN skip, checkpoints, HF export.

Tolerances: a 2-rank step and a 1-rank step on the same batch give losses within 1e-6 and
parameters within 1e-5 relative (observed ~1e-9 and ~3e-7: reduction order differs); resuming
from a checkpoint reproduces the next step's loss exactly (same CPU ops, same order).
"""

import json
import os
import subprocess
import sys

import pytest

from learner.checkpoint import list_checkpoints
from learner.microbatch import plan_microbatches, plan_shared_microbatches
from tests.integration.helpers import REPO


def run(tmp_path, model_dir, name, *args, ranks=1):
    out = tmp_path / f"{name}.json"
    launcher = [sys.executable]
    if ranks > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc-per-node={ranks}"]
    proc = subprocess.run(
        [
            *launcher,
            "-m",
            "tests.integration.train_procs",
            str(model_dir),
            str(out),
            *map(str, args),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def assert_same_training(a, b, loss_tol=1e-6, rel_tol=1e-5):
    for step in ("1", "2"):
        assert abs(a["losses"][step] - b["losses"][step]) < loss_tol
    for name, value in a["checksum"].items():
        assert abs(value - b["checksum"][name]) <= rel_tol * max(1.0, abs(value)), name


@pytest.mark.parametrize("share", [True, False], ids=["shared-prompts", "row-per-sample"])
def test_two_rank_fsdp_step_equals_one_rank_step(tmp_path, tiny_model_dir, share):
    # with prompt sharing, steps 1 and 2 each leave one rank a padding micro-batch
    flags = [] if share else ["--no-share"]
    one = run(tmp_path, tiny_model_dir, "one", 2, *flags)
    two = run(tmp_path, tiny_model_dir, "two", 2, *flags, ranks=2)
    assert one["world"] == 1 and two["world"] == 2
    assert_same_training(one, two)
    # a push gathers every rank's shards into the serving dtype
    for result in (one, two):
        push = result["push"]
        assert push["names_equal"] and push["rounded"]
        assert push["dtypes"] == ["torch.bfloat16"] and push["devices"] == ["cpu"]


def test_shared_prompts_train_like_one_row_per_sample(tmp_path, tiny_model_dir):
    shared = run(tmp_path, tiny_model_dir, "shared", 2)
    rows = run(tmp_path, tiny_model_dir, "rows", 2, "--no-share")
    assert_same_training(shared, rows, loss_tol=1e-5)


def test_resume_continues_with_identical_next_step_loss(tmp_path, tiny_model_dir):
    root = tmp_path / "ckpt"
    full = run(tmp_path, tiny_model_dir, "full", 3, "--save-at", 2, "--ckpt-root", root)
    (ckpt,) = full["checkpoints"]
    resumed = run(tmp_path, tiny_model_dir, "resumed", 3, "--resume", ckpt)
    assert resumed["losses"] == {"3": full["losses"]["3"]}
    assert resumed["checksum"] == full["checksum"]


def test_resume_across_rank_counts(tmp_path, tiny_model_dir):
    root = tmp_path / "ckpt"
    two = run(tmp_path, tiny_model_dir, "two", 3, "--save-at", 2, "--ckpt-root", root, ranks=2)
    one = run(tmp_path, tiny_model_dir, "one", 3, "--resume", two["checkpoints"][0])
    assert abs(one["losses"]["3"] - two["losses"]["3"]) < 1e-6


def test_a_nan_step_is_skipped_and_leaves_the_weights_untouched(tmp_path, tiny_model_dir):
    result = run(tmp_path, tiny_model_dir, "nan", 3, "--nan-at", 2)
    assert result["skipped"] == [2] and result["untouched"] is True
    assert set(result["losses"]) == {"1", "2", "3"}


def test_checkpoints_keep_the_last_k_and_export_hf(tmp_path, tiny_model_dir):
    root = tmp_path / "ckpt"
    run(tmp_path, tiny_model_dir, "k", 4, "--save-at", 1, "--ckpt-root", root, "--keep-last", 2)
    kept = list_checkpoints(str(root))
    assert [p.rsplit("_", 1)[1] for p in kept] == ["00000003", "00000004"]
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = f"{kept[-1]}/hf"
    model = AutoModelForCausalLM.from_pretrained(hf)
    tok = AutoTokenizer.from_pretrained(hf)
    assert (
        model.generate(tok("1 + 1", return_tensors="pt").input_ids, max_new_tokens=3).shape[1] > 3
    )
    code = (
        "import os; os.environ['VLLM_ENABLE_V1_MULTIPROCESSING']='0';"
        "os.environ.setdefault('VLLM_CPU_KVCACHE_SPACE','1');"
        "from vllm import LLM, SamplingParams;"
        f"llm = LLM(model={hf!r}, dtype='float32', enforce_eager=True, max_model_len=256);"
        "out = llm.generate(['1 + 1'], SamplingParams(max_tokens=3))[0].outputs[0];"
        "print('VLLM_OK', len(out.token_ids))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "VLLM_OK 3" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_micro_batch_plan(world):
    lengths = [50, 10, 40, 30, 20, 10, 5]
    plan = plan_microbatches(lengths, 60, world)
    assert len(plan) == world and len({len(p) for p in plan}) == 1  # same depth on every rank
    seen = sorted(i for rank in plan for micro in rank for i in micro)
    assert seen == list(range(len(lengths)))
    for rank in plan:
        for micro in rank:
            if len(micro) > 1:
                assert max(lengths[i] for i in micro) * len(micro) <= 60


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shared_micro_batch_plan_keeps_groups_together(world):
    keys = ["a", "a", "a", "b", "b", "c", "a", "c", "d"]
    prompt = {"a": 10, "b": 4, "c": 6, "d": 3}
    responses = [20, 5, 12, 25, 7, 9, 3, 9, 50]
    budget = 60
    plan = plan_shared_microbatches(keys, [prompt[k] for k in keys], responses, budget, world)
    assert len(plan) == world and len({len(p) for p in plan}) == 1
    seen = sorted(i for rank in plan for micro in rank for i in micro)
    assert seen == list(range(len(keys)))
    for rank in plan:
        for micro in rank:
            if len(micro) > 1:
                groups = {keys[i] for i in micro}
                padded = len(groups) * max(prompt[keys[i]] for i in micro) + len(micro) * max(
                    responses[i] for i in micro
                )
                assert padded <= budget, (micro, padded)
    # "a" (10 + 4 x 20 = 90 > 60) is cut in two pieces; "b", "c" fit whole and are never split
    where = {
        k: {
            (r, m)
            for r, rank in enumerate(plan)
            for m, micro in enumerate(rank)
            for i in micro
            if keys[i] == k
        }
        for k in prompt
    }
    assert len(where["a"]) == 2 and len(where["b"]) == 1 and len(where["c"]) == 1


def test_shared_prompt_logprobs_and_gradients_match_one_row_per_sample(tiny_model_dir):
    import random

    import torch
    from transformers import AutoModelForCausalLM

    from learner.batch import Sample
    from learner.microbatch import collate, collate_shared
    from learner.policy import PolicyLogprobs

    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    policy = PolicyLogprobs(lm)
    rng = random.Random(0)
    samples = []
    for _ in range(3):  # prompts of different lengths; responses of 0..12 tokens
        prompt = [rng.randrange(5, 500) for _ in range(rng.randint(3, 9))]
        for _ in range(4):
            r = rng.randint(0, 12)
            completion = [rng.randrange(5, 500) for _ in range(r)]
            samples.append(Sample(prompt + completion, len(prompt), [0.0] * r, 1.0, False, 1.0, 0))
    rng.shuffle(samples)

    def forward_backward(collate):
        lm.zero_grad()
        logp, entropy = policy(collate(samples, 0, torch.device("cpu")))
        (logp * torch.linspace(-1.0, 1.0, logp.numel())).sum().backward()
        return (
            logp.detach(),
            entropy.detach(),
            {n: p.grad.clone() for n, p in lm.named_parameters()},
        )

    rows, shared = forward_backward(collate), forward_backward(collate_shared)
    assert shared[0].shape == rows[0].shape == (sum(s.response_len for s in samples),)
    assert torch.allclose(shared[0], rows[0], atol=1e-5)
    assert torch.allclose(shared[1], rows[1], atol=1e-5)
    for name, grad in rows[2].items():
        assert torch.allclose(shared[2][name], grad, atol=1e-5, rtol=1e-4), name


def test_chunked_logprobs_match_the_full_vocab_computation(tiny_model_dir, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    import learner.policy
    from learner.batch import Sample
    from learner.microbatch import collate

    monkeypatch.setattr(learner.policy, "LOGIT_CHUNK", 7)  # force several chunks
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    policy = learner.policy.PolicyLogprobs(lm)
    samples = [
        Sample([5, 6, 7, 8, 9, 10, 11], 3, [0.0] * 4, 1.0, False, 1.0, 0),
        Sample([5, 6, 12, 13, 14, 15, 16, 17, 18, 19, 20], 2, [0.0] * 9, 1.0, False, 1.0, 0),
    ]
    b = collate(samples, 0, torch.device("cpu"))
    logp, entropy = policy(b)
    logp.sum().backward()
    chunked_grad = lm.lm_head.weight.grad.clone()
    lm.zero_grad()
    logits = lm(b["input_ids"], attention_mask=b["attention_mask"]).logits.reshape(
        -1, lm.config.vocab_size
    )
    full = torch.log_softmax(logits[b["positions"]].float(), -1)
    ref = full.gather(-1, b["targets"][:, None])[:, 0]
    assert torch.allclose(logp, ref, atol=1e-5)
    assert torch.allclose(entropy, -(full.exp() * full).sum(-1), atol=1e-4)
    ref.sum().backward()
    assert torch.allclose(chunked_grad, lm.lm_head.weight.grad, atol=1e-5)


EXIT_RANK = """
import logging, sys
import torch.distributed as dist
from learner.train import init_distributed
from learner.startup import exit_rank
init_distributed("gloo")
group = dist.new_group(backend="gloo")  # held, as the trainer holds its control group
logging.basicConfig(stream=sys.stderr)
logging.getLogger("t").warning("logged before the exit")
print("printed, no newline", end="")
exit_rank(3)
"""


def test_a_rank_exits_with_its_code_and_everything_it_wrote():
    """exit_rank skips the interpreter's teardown (where gloo's objects could abort it), so
    it must destroy the groups, flush what was printed and logged, and keep the code."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered stdout
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_RANK],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout.endswith("printed, no newline")
    assert "logged before the exit" in proc.stderr
