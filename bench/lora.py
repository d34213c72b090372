"""The learner with and without LoRA (``learner.lora``): step time, peak memory, trainable
parameters, optimizer state and what a weight push sends, on the tiny model and SmolLM2-135M,
one torch thread, each setting in a fresh process, interleaved rounds, medians. Prints JSON.

    .venv/bin/python bench/lora.py [--models tiny,smollm2] [--rounds 2] [--rank 16]

Batches are bench/learner.py's (the synthetic task's prompts, random responses up to 40
tokens): 8 prompts x 8 samples on the tiny model, 2 x 4 on SmolLM2 (a step there takes tens of
seconds on one thread). The push is ``full_state_dict`` in the model's dtype: with LoRA the
merged weights, so the same bytes as without (the generators serve a plain model).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
from common.machine import describe  # noqa: E402

SHAPES = {"tiny": (8, 8, 12, 3), "smollm2": (2, 4, 3, 1)}  # prompts, samples, steps, warm-up


def batches(model_dir: Path, prompts: int, samples: int, count: int):
    import random

    from transformers import AutoTokenizer

    from learner.batch import Sample, TrainBatch
    from learner.prompts import prompt_ids
    from services.demo.tiny_task import make_problem

    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(0)
    for _ in range(count):
        rows = []
        for _group in range(prompts):
            prompt = prompt_ids(tok, make_problem(rng)["prompt"], "own")
            for _ in range(samples):
                n = 40 if rng.random() < 7 / 8 else rng.randint(5, 39)
                response = [rng.randrange(5, 500) for _ in range(n)]
                rows.append(Sample(prompt + response, len(prompt), [-6.0] * n, rng.uniform(-1, 1),
                                   False, 0, 0))  # fmt: skip
        yield TrainBatch(rows, prompts)


def worker(model_dir: str, model: str, rank: int) -> None:
    from services.process_setup import limit_threads

    limit_threads(1)
    from common.config import load_config
    from learner.objective import make_objective
    from learner.train import Trainer

    prompts, samples, steps, warmup = SHAPES[model]
    lora = ["--learner.lora.rank", str(rank), "--learner.lora.alpha", str(2 * rank)] if rank else []
    cfg = load_config(
        overrides=["--model.path", model_dir, "--algorithm.mode", "grpo",
                   "--learner.micro_batch_tokens", "4096", *lora],
        environ={},
    )  # fmt: skip
    trainer = Trainer(cfg, make_objective(cfg.algorithm))
    times = []
    for batch in batches(Path(model_dir), prompts, samples, steps + warmup):
        started = time.perf_counter()
        trainer.train_step(batch)
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    pushed = trainer.full_state_dict()
    push_s = time.perf_counter() - started
    state = trainer.optimizer.state.values()
    report = {
        "step_s": statistics.median(times[warmup:]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "optimizer_state_mb": sum(t.numel() * t.element_size() for s in state
                                  for t in s.values() if hasattr(t, "numel")) / 2**20,
        "push_mb": sum(t.numel() * t.element_size() for t in pushed.values()) / 2**20,
        "push_gather_s": push_s,
    }  # fmt: skip
    print(json.dumps(report))


def run(model_dir: Path, model: str, rank: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", str(model_dir), model, "--rank", str(rank)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if out.returncode != 0:
        raise RuntimeError(f"{model} rank {rank} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def model_dir(model: str, tmp: Path) -> Path:
    if model == "tiny":
        from services.demo.tiny_model import build_tiny_model

        return build_tiny_model(tmp / "tiny", seed=0)
    from services.demo.real_model import build_smollm2

    return build_smollm2()


def summarize(runs: list[dict]) -> dict:
    return {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--worker", nargs=2, metavar=("MODEL_DIR", "MODEL"))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.rank)
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            path = model_dir(model, Path(tmp))
            runs: dict[str, list[dict]] = {"full": [], f"lora_r{args.rank}": []}
            for _ in range(args.rounds):  # interleaved: the machine's drift hits both alike
                runs["full"].append(run(path, model, 0))
                runs[f"lora_r{args.rank}"].append(run(path, model, args.rank))
            medians = {k: summarize(v) for k, v in runs.items()}
            lora = medians[f"lora_r{args.rank}"]
            results[model] = {
                **medians,
                "lora_vs_full": {k: round(lora[k] / medians["full"][k], 3)
                                 for k in ("step_s", "peak_rss_mb", "push_mb")},
                "runs_step_s": {k: [round(r["step_s"], 4) for r in v] for k, v in runs.items()},
            }  # fmt: skip
    report = {"bench": "lora", "machine": describe(), "date": time.strftime("%Y-%m-%d"),
              "shapes": SHAPES, "results": results}  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
