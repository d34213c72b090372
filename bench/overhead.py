"""Pipeline overhead: rollouts/s delivered to the learner through Redis and a verifier vs the
vLLM engine's raw generation rate alone, same prompts, same sampling, same run. Prints JSON.

    .venv/bin/python bench/overhead.py [--prompts 128] [--rounds 3] [--threads 0] [--batch-tasks 64]

Raw: ``VllmEngine.generate`` on all prompts in one call, in a fresh process per thread
setting: the generator's (``--threads``, 0 = torch's default, every core) and, when that is
not 0, torch's default too; the faster is the baseline. Stack: a `luffy generator`
(``--generator.threads``, ``--generator.max_batch_tasks`` 64 = 512 sequences per engine
call, so vLLM's 256-sequence batch stays full instead of draining at the end of each call)
and a `luffy verifier` process, started and ready before the clock starts; the
prompts are published to ``prompts`` and the clock stops when the last scored rollout has been
read from ``scored`` (what the learner consumes). Target (issue #8): stack >= 0.95 x raw.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
from common.machine import describe  # noqa: E402

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
N, MAX_TOKENS = 8, 40


def prompts(model_dir: Path, count: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    from learner.prompts import prompt_ids
    from services.demo.tiny_task import make_problem

    tok = AutoTokenizer.from_pretrained(model_dir)
    import random

    rng = random.Random(0)
    return [prompt_ids(tok, make_problem(rng)["prompt"], "own") for _ in range(count)]


def raw_rate(model_dir: Path, ids: list[list[int]], rounds: int) -> list[float]:
    """In this process (threads already capped by the caller): the engine alone."""
    from common.config import load_config
    from common.schemas import Sampling
    from generator.engines import GenRequest, make_engine

    cfg = load_config(
        overrides=["--model.path", str(model_dir), "--generator.max_model_len", "256"], environ={}
    )
    engine = make_engine(cfg)
    requests = [GenRequest(p, N, Sampling(1.0, 1.0, MAX_TOKENS, seed=i)) for i, p in enumerate(ids)]
    engine.generate(requests[:4])  # warm-up
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        out = engine.generate(requests)
        rates.append(sum(len(s) for s in out) / (time.perf_counter() - start))
    engine.close()
    return rates


def raw_in_subprocess(model_dir: Path, prompts_n: int, rounds: int, threads: int) -> list[float]:
    """A fresh process per thread setting: vLLM's CPU worker fixes the thread count at start."""
    args = ["--raw-worker", str(model_dir), "--threads", str(threads), "--prompts", str(prompts_n)]
    out = subprocess.run(
        [sys.executable, __file__, *args, "--rounds", str(rounds)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def stack_rate(
    model_dir: Path, ids: list[list[int]], rounds: int, url: str, threads: int, batch_tasks: int
) -> list[float]:
    from common.config import RedisConfig
    from common.membership import list_members
    from common.schemas import Sampling, Task, encode_task
    from common.transport import (
        Keys,
        Resilient,
        StreamConsumer,
        StreamPublisher,
        delete_run_keys,
    )

    cfg = RedisConfig(url=url)
    resilient = Resilient.from_config(cfg)
    rates = []
    for _ in range(rounds):
        keys = Keys(f"bench-ovh-{uuid.uuid4().hex[:8]}")
        common = [
            "--redis.url",
            url,
            "--run.name",
            keys.run,
            "--run.output_dir",
            tempfile.mkdtemp(),
            "--model.path",
            str(model_dir),
            "--run.log_level",
            "WARNING",
        ]
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "services.generator",
                    *common,
                    "--generator.max_model_len",
                    "256",
                    "--generator.threads",
                    str(threads),
                    "--generator.max_batch_tasks",
                    str(batch_tasks),
                ],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            subprocess.Popen(
                [sys.executable, "-m", "services.verifier", *common, "--verifier.workers", "1"],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        ]
        try:
            while not (
                any(m.get("sync_ranks") for m in list_members(resilient, keys, "generator"))
                and list_members(resilient, keys, "verifier")
            ):
                time.sleep(0.2)
            learner = StreamConsumer(resilient, keys, "scored", "learner", cfg)
            tasks = [
                (
                    f"t{i}",
                    encode_task(
                        Task(f"t{i}", f"p{i}", p, N, Sampling(1.0, 1.0, MAX_TOKENS, i), "0")
                    ),
                )
                for i, p in enumerate(ids)
            ]
            warm = [
                (
                    f"w{i}",
                    encode_task(
                        Task(f"w{i}", "w", ids[0], N, Sampling(1.0, 1.0, MAX_TOKENS, i), "0")
                    ),
                )
                for i in range(4)
            ]
            StreamPublisher(resilient, keys, "prompts").publish(warm)
            got = 0
            while got < 4 * N:
                got += len(learner.fetch(block_ms=200))
            start = time.perf_counter()
            StreamPublisher(resilient, keys, "prompts").publish(tasks)
            got = 0
            while got < len(ids) * N:
                batch = learner.fetch(block_ms=200)
                learner.commit([(d, []) for d in batch])
                got += len(batch)
            rates.append(got / (time.perf_counter() - start))
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(60)
            delete_run_keys(resilient.client, keys)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--threads", type=int, default=0, help="generator threads (0: all)")
    parser.add_argument("--batch-tasks", type=int, default=64, help="generator.max_batch_tasks")
    parser.add_argument("--raw-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_worker:  # child mode: print the raw rates of this thread setting
        from services.cli import limit_threads

        limit_threads(args.threads)
        ids = prompts(args.raw_worker, args.prompts)
        print(json.dumps(raw_rate(args.raw_worker, ids, args.rounds)))
        return
    from services.demo.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "m", seed=0)
        ids = prompts(model, args.prompts)
        stack = stack_rate(model, ids, args.rounds, args.url, args.threads, args.batch_tasks)
        raw = {
            t: raw_in_subprocess(model, args.prompts, args.rounds, t)
            for t in sorted({args.threads, 0})
        }
    raw_med = {t: statistics.median(r) for t, r in raw.items()}
    best = max(raw_med.values())  # the baseline is the engine at its fastest setting
    stack_med = statistics.median(stack)
    print(
        json.dumps(
            {
                "bench": "overhead",
                "machine": describe(),
                "date": time.strftime("%Y-%m-%d"),
                "prompts": args.prompts,
                "samples_per_prompt": N,
                "max_tokens": MAX_TOKENS,
                "generator_threads": args.threads,
                "generator_max_batch_tasks": args.batch_tasks,
                "raw_rollouts_per_s": {str(t): round(v, 1) for t, v in raw_med.items()},
                "stack_rollouts_per_s": round(stack_med, 1),
                "ratio": round(stack_med / best, 3),
                "runs": {
                    "raw": {str(t): [round(x, 1) for x in r] for t, r in raw.items()},
                    "stack": [round(x, 1) for x in stack],
                },
                "target": "stack >= 0.95 x the engine alone at its faster thread setting",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
