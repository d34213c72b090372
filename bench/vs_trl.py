"""luffy-async vs TRL's GRPOTrainer: the same tiny model, prompts, group size, max tokens,
batch and steps, on-policy GRPO in both, one after the other in the same run. Prints JSON.

    .venv/bin/python bench/vs_trl.py [--steps 20] [--rounds 3] [--also two_generators]

TRL lives in its own venv (created on first use: torch 2.13 CPU, trl, math-verify), never in
luffy-async's dependencies. What is matched: model and tokenizer (one tiny model folder), the
synthetic task's first prompts, 8 prompts x 8 samples per step, 40 completion tokens,
temperature 1, lr 1e-3, Dr.GRPO loss, no KL, the same math-verify reward, float32 on CPU.
TRL generates with transformers in its training process (torch uses both cores); luffy runs
its stack (vLLM generator, verifier, learner as separate processes on the same 2 cores).
Throughput = samples trained per second over steps 2..N (start-up excluded in both).
Target (issue #8): ours >= 1.5 x TRL.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
from common.machine import describe  # noqa: E402

PROMPTS, GROUP, MAX_TOKENS = 8, 8, 40


def ensure_trl(python: Path) -> Path:
    if python.exists():
        return python
    venv = python.parent.parent
    subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "pip"), "install", "-q"]
    subprocess.check_call([*pip, "torch==2.13.0"])
    subprocess.check_call([*pip, "trl", "math-verify", "transformers<5.20"])
    return python


def run_trl(python: Path, model: Path, train: Path, steps: int) -> dict:
    out = subprocess.run(
        [
            str(python),
            "bench/trl_worker.py",
            str(model),
            str(train),
            str(steps),
            str(PROMPTS),
            str(GROUP),
            str(MAX_TOKENS),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if out.returncode != 0:
        raise RuntimeError(f"TRL run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# variants of our stack a round can also run (``--also``), as overrides of the tiny config
VARIANTS = {
    "batch": ["--generator.scheduling", "batch"],
    # two generators, each with half the batch: tried where the generator's CPU per step is
    # twice the learner's (AVX2 VM, 2026-12-04): 1.09x TRL vs 1.17x with one (bench/README.md)
    "two_generators": ["--generator.replicas", "2"],
}


def run_ours(
    model: Path, task: Path, steps: int, out: Path, url: str, extra: Sequence[str] = ()
) -> dict:
    from services.plot import read_metrics
    from services.supervisor import up_args

    run = f"vs-trl-{int(time.time())}"
    cmd = [
        sys.executable,
        *up_args("configs/tiny-cpu.toml", run, out),
        "--redis.url",
        url,
        "--model.path",
        str(model),
        "--learner.train_file",
        str(task / "train.jsonl"),
        "--learner.eval_every",
        "0",
        "--learner.checkpoint_every",
        "0",
        "--learner.max_steps",
        str(steps),
        "--learner.batch_prompts",
        str(PROMPTS),
        "--algorithm.mode",
        "grpo",
        "--algorithm.n_on",
        str(GROUP),
        "--algorithm.n_off",
        "0",
        "--generator.max_new_tokens",
        str(MAX_TOKENS),
        "--learner.lr",
        "1e-3",
        *extra,
    ]
    with (out / f"{run}.log").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        snapshots = watch_cpu(proc)
    from common.config import RedisConfig
    from common.transport import Keys, Resilient, delete_run_keys

    delete_run_keys(Resilient.from_config(RedisConfig(url=url)).client, Keys(run))
    train, _ = read_metrics(out / run / "metrics.jsonl")
    steady = train[-1]["time"] - train[0]["time"]
    samples = sum(r["samples_on"] for r in train[1:])
    return {
        "exit_code": proc.returncode,
        "steps": len(train),
        "steady_s": round(steady, 2),
        "samples_per_s": samples / steady,
        "cpu_ms_per_step": cpu_per_step(snapshots, train[0]["time"], train[-1]["time"], len(train)),
    }


def cpu_by_role(up_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of each role's processes with their children (the
    verifier's scoring workers, vLLM helpers), and of ``luffy up`` itself."""
    import psutil

    from services.stack import role_of_command

    up = psutil.Process(up_pid)
    totals = {"up": sum(up.cpu_times()[:2])}
    for child in up.children():
        try:
            role = role_of_command(" ".join(child.cmdline())) or "other"
            procs = [child, *child.children(recursive=True)]
            totals[role] = totals.get(role, 0.0) + sum(sum(p.cpu_times()[:2]) for p in procs)
        except psutil.Error:
            continue
    return totals


def watch_cpu(proc: subprocess.Popen, every_s: float = 0.25) -> list[tuple[float, dict]]:
    """(wall time, cpu_by_role) every ``every_s`` until ``proc`` exits."""
    import psutil

    snapshots = []
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            snapshots.append((time.time(), cpu_by_role(proc.pid)))
        time.sleep(every_s)  # sampling period of a monitor, not synchronization
    return snapshots


def cpu_per_step(snapshots: list, start: float, end: float, steps: int) -> dict[str, float]:
    """Milliseconds of CPU per training step by role over the steady window (the snapshots
    nearest to the first and the last step), and the window's wall ms per step."""
    if not snapshots or steps < 2:
        return {}
    a = min(snapshots, key=lambda s: abs(s[0] - start))
    b = min(snapshots, key=lambda s: abs(s[0] - end))
    per = 1000.0 / (steps - 1)
    cpu = {role: round((b[1][role] - a[1].get(role, 0.0)) * per, 1) for role in b[1]}
    return {**cpu, "wall": round((b[0] - a[0]) * per, 1)}


def median_run(runs: list[dict]) -> dict:
    """The run with the median samples/s (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r["samples_per_s"])[(len(runs) - 1) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--rounds", type=int, default=3, help="ours then TRL, this many times; medians reported"
    )
    parser.add_argument("--trl-python", default=".venv-trl/bin/python")
    parser.add_argument("--out", default="runs/bench-vs-trl")
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--also",
        action="append",
        choices=sorted(VARIANTS),
        default=[],
        help="each round also runs this variant of ours (reported beside); repeatable",
    )
    args = parser.parse_args()
    from services.demo.tiny_model import build_tiny_model
    from services.demo.tiny_task import make_task

    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    python = ensure_trl((REPO / args.trl_python).absolute())
    runs: list[tuple[dict, dict]] = []
    variant_runs: dict[str, list[dict]] = {name: [] for name in args.also}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "model", seed=0)
        task = make_task(Path(tmp) / "task", n_train=2000, n_eval=10)
        for _ in range(args.rounds):  # interleaved: this VM's speed drifts within minutes
            ours_run = run_ours(model, task, args.steps, out, args.url)
            for name, results in variant_runs.items():
                results.append(run_ours(model, task, args.steps, out, args.url, VARIANTS[name]))
            runs.append((ours_run, run_trl(python, model, task / "train.jsonl", args.steps)))
    ours = median_run([o for o, _ in runs])
    trl = median_run([t for _, t in runs])
    print(
        json.dumps(
            {
                "bench": "vs_trl",
                "machine": describe(),
                "date": time.strftime("%Y-%m-%d"),
                "matched": {
                    "prompts_per_step": PROMPTS,
                    "group": GROUP,
                    "max_tokens": MAX_TOKENS,
                    "steps": args.steps,
                    "lr": 1e-3,
                    "loss": "dr_grpo, no KL, float32 CPU",
                },
                "rounds": args.rounds,
                "ours_samples_per_s": round(ours["samples_per_s"], 2),
                "trl_samples_per_s": round(trl["samples_per_s"], 2),
                "ratio": round(ours["samples_per_s"] / trl["samples_per_s"], 2),
                "round_ratios": [
                    round(o["samples_per_s"] / t["samples_per_s"], 2) for o, t in runs
                ],
                "ours": ours,
                "trl": trl,
                "ours_runs": [round(o["samples_per_s"], 2) for o, _ in runs],
                "trl_runs": [round(t["samples_per_s"], 2) for _, t in runs],
                "target": 1.5,
                "variants": {
                    name: _variant_summary(name, runs_of, trl)
                    for name, runs_of in variant_runs.items()
                },
            },
            indent=2,
        )
    )


def _variant_summary(name: str, results: list[dict], trl: dict) -> dict:
    """A variant's overrides, median run, every round's samples/s and ratio to TRL's median."""
    median = median_run(results)
    return {
        "overrides": " ".join(VARIANTS[name]),
        "median": median,
        "runs": [round(r["samples_per_s"], 2) for r in results],
        "ratio": round(median["samples_per_s"] / trl["samples_per_s"], 2),
    }


if __name__ == "__main__":
    main()
