"""LUFFY vs on-policy GRPO on the synthetic task, same stack, same budget, one after the other
in the same run. Writes one JSON (stdout and <out>/luffy_vs_grpo.json) and one PNG with both
curves (<out>/luffy_vs_grpo.png).

    .venv/bin/python bench/luffy_vs_grpo.py [--minutes 20] [--out runs/luffy-vs-grpo]

Each mode runs ``luffy up --config configs/tiny-cpu.toml`` for ``--minutes`` of training wall
time (``learner.max_minutes``) on a fresh copy of the tiny model. Claim checked (issue #6):
the untrained model scores ~0; LUFFY's held-out reward reaches >= 0.6 within 20 minutes;
GRPO stays <= 0.05 (it never sees a reward).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def run_mode(mode: str, minutes: float, out: Path, extra: list[str]) -> dict:
    from services.plot import read_metrics
    from services.supervisor import up_args

    name = f"{mode}-{int(time.time())}"
    cmd = [
        sys.executable,
        *up_args("configs/tiny-cpu.toml", name, out),
        "--algorithm.mode",
        mode,
        "--learner.max_minutes",
        str(minutes),
        "--learner.max_steps",
        "100000",
        "--learner.checkpoint_every",
        "0",
        *extra,
    ]
    started = time.monotonic()
    log = (out / f"{name}.log").open("w")
    code = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wall = time.monotonic() - started
    train, evals = read_metrics(out / name / "metrics.jsonl")
    first = train[0]["time"] if train else 0.0
    reach = next((e for e in evals if e["reward_mean"] >= 0.6), None)
    return {
        "run": name,
        "exit_code": code,
        "wall_s": round(wall, 1),
        "steps": train[-1]["step"] if train else 0,
        "held_out": [
            {
                "step": e["step"],
                "reward": round(e["reward_mean"], 4),
                "minutes": round((e["time"] - first) / 60, 2),
            }
            for e in evals
        ],
        "untrained_reward": evals[0]["reward_mean"] if evals else None,
        "final_reward": evals[-1]["reward_mean"] if evals else None,
        "best_reward": max((e["reward_mean"] for e in evals), default=None),
        "minutes_to_0.6": round((reach["time"] - first) / 60, 2) if reach else None,
        "metrics": str(out / name / "metrics.jsonl"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--out", default="runs/luffy-vs-grpo")
    parser.add_argument("extra", nargs="*", help="more overrides for both runs (--section.key=v)")
    args = parser.parse_args()
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # the GRPO baseline as LUFFY's paper runs it: 8 on-policy samples per prompt, PPO clip
    grpo = ["--algorithm.n_on", "8", "--algorithm.clip", "true", "--algorithm.advantage", "grpo"]
    results = {
        "luffy": run_mode("luffy", args.minutes, out, args.extra),
        "grpo": run_mode("grpo", args.minutes, out, [*grpo, *args.extra]),
    }
    from services.plot import plot_runs

    png = plot_runs(
        {m: r["metrics"] for m, r in results.items()},
        out / "luffy_vs_grpo.png",
        f"LUFFY vs GRPO on the synthetic task ({args.minutes:g} min each)",
    )
    luffy, grpo = results["luffy"], results["grpo"]
    report = {
        "bench": "luffy_vs_grpo",
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
        "date": time.strftime("%Y-%m-%d"),
        "minutes_per_mode": args.minutes,
        "results": results,
        "claims": {
            "untrained_about_zero": all(
                (r["untrained_reward"] or 0) <= 0.05 for r in results.values()
            ),
            "luffy_reaches_0.6": luffy["best_reward"] is not None and luffy["best_reward"] >= 0.6,
            "grpo_stays_at_most_0.05": grpo["best_reward"] is not None
            and grpo["best_reward"] <= 0.05,
        },
        "plot": str(png),
    }
    (out / "luffy_vs_grpo.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
