"""End-to-end training throughput of the full stack (tiny model, CPU): asynchronous
(``max_off_policy_steps`` = 1 and 2) vs synchronous (0), same config otherwise, same run.
Prints JSON.

    .venv/bin/python bench/pipeline.py [--steps 40] [--out runs/bench-pipeline] [--config FILE]

Per mode: on-policy samples trained per second and response tokens trained per second over
the steady part of the run (from the first to the last step), the learner's idle fraction
(1 - time in train steps / wall) and the generators' (1 - time in engine calls / wall, from
their /metrics). Target (issue #8): async >= 1.3 x sync on CPU. Sync runs twice, with one
thread per process (the async setting) and with torch's default (every core per process: the
phases alternate, so each may use the whole machine); the faster one is the baseline.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
from common.machine import describe  # noqa: E402


def generator_busy_seconds(cfg_redis_url: str, run: str, stop: threading.Event, out: dict) -> None:
    """Poll the generators' luffy_generator_engine_busy_seconds_total until the run ends."""
    from common.config import RedisConfig
    from common.membership import list_members
    from common.transport import Keys, Resilient

    resilient = Resilient.from_config(RedisConfig(url=cfg_redis_url))
    keys = Keys(run)
    while not stop.wait(1.0):
        for member in list_members(resilient, keys, "generator"):
            try:
                text = httpx.get(f"http://127.0.0.1:{member['port']}/metrics", timeout=1).text
            except httpx.HTTPError:
                continue
            for line in text.splitlines():
                if line.startswith("luffy_generator_engine_busy_seconds_total"):
                    out[member["id"]] = float(line.split()[-1])


def drop_run_keys(redis_url: str, run: str) -> None:
    from common.config import RedisConfig
    from common.transport import Keys, Resilient, delete_run_keys

    delete_run_keys(Resilient.from_config(RedisConfig(url=redis_url)).client, Keys(run))


def run_mode(lag: int, threads: int, steps: int, out: Path, redis_url: str, config: str) -> dict:
    from services.plot import read_metrics
    from services.supervisor import up_args

    run = f"pipe-lag{lag}-t{threads}-{int(time.time())}"
    cmd = [
        sys.executable,
        *up_args(config, run, out),
        "--redis.url",
        redis_url,
        "--algorithm.max_off_policy_steps",
        str(lag),
        "--learner.max_steps",
        str(steps),
        "--learner.eval_every",
        "0",
        "--learner.checkpoint_every",
        "0",
        "--learner.threads",
        str(threads),
        "--generator.threads",
        str(threads),
    ]
    busy: dict[str, float] = {}
    stop = threading.Event()
    poller = threading.Thread(target=generator_busy_seconds, args=(redis_url, run, stop, busy))
    poller.start()
    with (out / f"{run}.log").open("w") as log:
        code = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    stop.set()
    poller.join()
    drop_run_keys(redis_url, run)
    train, _ = read_metrics(out / run / "metrics.jsonl")
    steady = train[1:]  # from the end of the first step: start-up excluded
    wall = steady[-1]["time"] - train[0]["time"]
    samples = sum(r["samples_on"] for r in steady)
    tokens = sum(r["tokens"] for r in steady)
    learner_busy = sum(r["step_seconds"] for r in steady)
    gen_busy = sum(busy.values())  # whole run incl. the first step: an upper bound on busy
    return {
        "max_off_policy_steps": lag,
        "threads_per_process": threads or "torch default (all cores)",
        "exit_code": code,
        "steps": len(train),
        "wall_s": round(wall, 2),
        "samples_per_s": round(samples / wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "learner_idle_fraction": round(1 - learner_busy / wall, 3),
        "generator_idle_fraction": round(
            max(0.0, 1 - gen_busy / (wall + train[0]["step_seconds"])), 3
        ),
        "max_lag_seen": max(r.get("lag_max", 0) for r in train),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default="runs/bench-pipeline")
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--config", default="configs/tiny-cpu.toml", help="the stack's config")
    args = parser.parse_args()
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    plan = {"sync_all_threads": (0, 0), "sync": (0, 1), "async1": (1, 1), "async2": (2, 1)}
    modes = {
        name: run_mode(lag, t, args.steps, out, args.url, args.config)
        for name, (lag, t) in plan.items()
    }
    # the baseline is the faster synchronous setting: alternating phases may use every core
    sync = max(modes["sync_all_threads"]["samples_per_s"], modes["sync"]["samples_per_s"])
    report = {
        "bench": "pipeline",
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d"),
        "steps": args.steps,
        "modes": modes,
        "async1_vs_sync": round(modes["async1"]["samples_per_s"] / sync, 3),
        "async2_vs_sync": round(modes["async2"]["samples_per_s"] / sync, 3),
        "target": "async >= 1.3 x sync (the faster of the two synchronous settings)",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
