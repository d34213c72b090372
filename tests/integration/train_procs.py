"""Trainer runs for tests, one or two ranks (under torchrun).

    python -m tests.integration.train_procs MODEL_DIR OUT.json STEPS [--save-at N] [--resume DIR]
        [--nan-at N] [--ckpt-root DIR] [--keep-last K] [--no-share] [--lora RANK] [--lr LR]

Batches are a fixed function of the step number, so runs are comparable.
"""

from __future__ import annotations

import argparse
import json
import random

import torch

from common.config import load_config
from learner.batch import Sample, TrainBatch
from learner.collective import Ranks, follow
from learner.objective import make_objective
from learner.startup import exit_rank
from learner.train import Trainer


def batch_for(step: int, nan: bool = False) -> TrainBatch:
    rng = random.Random(step)
    samples = []
    for _g in range(3):
        prompt = [rng.randrange(500) for _ in range(rng.randint(4, 10))]  # a group shares it
        for i in range(8):
            completion = [rng.randrange(500) for _ in range(rng.randint(4, 24))]
            adv = float("nan") if nan else rng.choice([-1.0, -0.25, 0.5, 1.0])
            samples.append(
                Sample(
                    prompt + completion, len(prompt), [-6.2] * len(completion), adv, i == 7, 1.0, 0
                )
            )
    return TrainBatch(samples, 3)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("steps", type=int)
    p.add_argument("--save-at", type=int, default=0)
    p.add_argument("--resume", default="")
    p.add_argument("--nan-at", type=int, default=0)
    p.add_argument("--ckpt-root", default="")
    p.add_argument("--keep-last", type=int, default=3)
    p.add_argument("--no-share", action="store_true", help="learner.share_prompts = false")
    p.add_argument("--collective-timeout", default="600", help="learner.collective_timeout_s")
    p.add_argument("--lora", type=int, default=0, help="learner.lora.rank (0: full training)")
    p.add_argument("--lr", default="1e-3", help="learner.lr")
    a = p.parse_args()
    lora = ["--learner.lora.rank", str(a.lora), "--learner.lora.alpha", str(2 * a.lora)]
    cfg = load_config(
        overrides=[
            "--model.path",
            a.model,
            "--learner.lr",
            a.lr,
            "--learner.micro_batch_tokens",
            "200",
            "--sync.backend",
            "gloo",
            "--learner.share_prompts",
            str(not a.no_share).lower(),
            "--learner.collective_timeout_s",
            a.collective_timeout,
            *(lora if a.lora else []),
        ],
        environ={},
    )
    trainer = Trainer(cfg, make_objective(cfg.algorithm))
    if trainer.rank != 0:
        follow(trainer)
        exit_rank(0)
    ranks = Ranks(trainer)
    results = {"losses": {}, "skipped": [], "checkpoints": []}
    if a.resume:
        ranks.load(a.resume)
    while trainer.step < a.steps:
        nan = trainer.step + 1 == a.nan_at
        before = checksum_run(ranks) if nan else None
        r = ranks.train_step(batch_for(trainer.step + 1, nan))
        results["losses"][str(r.step)] = r.loss
        print(f"step {r.step} loss {r.loss:.6f}", flush=True)
        if r.skipped:
            results["skipped"].append(r.step)
            results["untouched"] = checksum_run(ranks) == before
        if a.save_at and r.step % a.save_at == 0:
            path = ranks.save(a.ckpt_root, {"version": r.step}, a.keep_last, True)
            results["checkpoints"].append(path)
    results["checksum"] = checksum_run(ranks)
    results["push"] = push_weights_check(ranks)
    results["world"] = trainer.world
    ranks.stop()
    with open(a.out, "w") as fh:
        json.dump(results, fh)
    exit_rank(0)


def push_weights_check(ranks: Ranks) -> dict:
    """What a weight push sends in bfloat16: its dtypes, devices, and whether each tensor is
    the trained float32 weight rounded to bfloat16."""
    trained = ranks.full_state_dict()
    pushed = ranks.full_state_dict("bfloat16", on_device=True)
    return {
        "names_equal": list(pushed) == list(trained),
        "dtypes": sorted({str(t.dtype) for t in pushed.values()}),
        "devices": sorted({t.device.type for t in pushed.values()}),
        "rounded": all(torch.equal(pushed[n], t.to(torch.bfloat16)) for n, t in trained.items()),
    }


def checksum_run(ranks: Ranks) -> dict[str, float]:
    full = ranks.full_state_dict()
    return {k: float(v.double().abs().sum()) for k, v in full.items()}


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
