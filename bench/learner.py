"""Learner step time on the tiny model: one row per sample vs each prompt encoded once
(``learner.share_prompts``), glibc's default malloc vs ``learner.keep_freed_memory``, one
torch thread, interleaved rounds, medians. Prints JSON.

    .venv/bin/python bench/learner.py [--steps 30] [--rounds 3]

A batch is what vs_trl.py trains: 8 prompts of the synthetic task (23 tokens with the chat
template) x 8 samples, responses of up to 40 tokens (7 in 8 at the cap, as a random policy
makes them). Each setting runs in a fresh process (malloc options hold for a process's life);
the first 3 steps are warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
from common.machine import describe  # noqa: E402

SETTINGS = {  # name -> (share_prompts, keep_freed_memory)
    "rows": (False, False),
    "rows+keep_freed": (False, True),
    "shared": (True, False),
    "shared+keep_freed": (True, True),
}
WARMUP = 3


def batches(model_dir: Path, count: int):
    import random

    from transformers import AutoTokenizer

    from learner.batch import Sample, TrainBatch
    from learner.prompts import prompt_ids
    from services.demo.tiny_task import make_problem

    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(0)
    for _ in range(count):
        samples = []
        for _group in range(8):
            prompt = prompt_ids(tok, make_problem(rng)["prompt"], "own")
            for _ in range(8):
                n = 40 if rng.random() < 7 / 8 else rng.randint(5, 39)
                response = [rng.randrange(5, 500) for _ in range(n)]
                adv = rng.uniform(-1.0, 1.0)
                samples.append(Sample(prompt + response, len(prompt), [-6.0] * n, adv, False, 0, 0))
        yield TrainBatch(samples, 8)


def worker(model_dir: str, setting: str, steps: int) -> None:
    share, keep = SETTINGS[setting]
    from services.cli import keep_freed_memory, limit_threads

    limit_threads(1)
    keep_freed_memory(keep)
    from common.config import load_config
    from learner.objective import make_objective
    from learner.train import Trainer

    cfg = load_config(
        overrides=[
            "--model.path",
            model_dir,
            "--algorithm.mode",
            "grpo",
            "--learner.micro_batch_tokens",
            "4096",
            "--learner.share_prompts",
            str(share).lower(),
        ],
        environ={},
    )
    trainer = Trainer(cfg, make_objective(cfg.algorithm))
    times = []
    for batch in batches(Path(model_dir), steps + WARMUP):
        started = time.perf_counter()
        trainer.train_step(batch)
        times.append(time.perf_counter() - started)
    cpu = os.times()
    print(
        json.dumps(
            {
                "step_s": statistics.median(times[WARMUP:]),
                "kernel_share": cpu.system / max(1e-9, cpu.user + cpu.system),
            }
        )
    )


def run_setting(model_dir: Path, setting: str, steps: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", str(model_dir), setting, "--steps", str(steps)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if out.returncode != 0:
        raise RuntimeError(f"{setting} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", nargs=2, metavar=("MODEL_DIR", "SETTING"))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.steps)
        return
    from services.demo.tiny_model import build_tiny_model

    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "model", seed=0)
        for _ in range(args.rounds):
            for name in SETTINGS:
                runs[name].append(run_setting(model, name, args.steps))
    step_s = {name: statistics.median(r["step_s"] for r in rs) for name, rs in runs.items()}
    print(
        json.dumps(
            {
                "bench": "learner",
                "machine": describe(),
                "date": time.strftime("%Y-%m-%d"),
                "batch": "8 prompts x 8 samples, responses <= 40 tokens, 1 thread",
                "step_s": {k: round(v, 4) for k, v in step_s.items()},
                "speedup_vs_rows": {k: round(step_s["rows"] / v, 2) for k, v in step_s.items()},
                "kernel_share": {
                    k: round(statistics.median(r["kernel_share"] for r in rs), 3)
                    for k, rs in runs.items()
                },
                "runs_step_s": {k: [round(r["step_s"], 4) for r in rs] for k, rs in runs.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
