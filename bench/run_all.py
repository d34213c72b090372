"""Every benchmark in one go; writes one JSON with all figures (stdout and --out).

    .venv/bin/python bench/run_all.py [--out runs/bench-all.json] [--quick]

Order: transport, verifier, generator, overhead, pipeline, learner, vs_trl, luffy_vs_grpo (the last
takes ~15 minutes per seed on a 2-core VM: 3 seeds, or with --quick one seed of 500 LUFFY steps).
None of these are timed tests in the test suite.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# one seed, LUFFY for 500 steps (the first 0.9 comes at steps 340-460), GRPO for its 5 minutes
QUICK_LUFFY_VS_GRPO = ("--seeds", "0", "--steps", "500", "--out", "runs/luffy-vs-grpo-quick")


def run(script: str, *args: str) -> dict:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, f"bench/{script}.py", *args], cwd=REPO, capture_output=True, text=True
    )
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:], "seconds": round(time.monotonic() - started, 1)}
    out = proc.stdout
    result = json.loads(out[out.index("{") :])
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/bench-all.json")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and shorter runs")
    args = parser.parse_args()
    quick = args.quick
    results = {
        "transport": run("transport", "--rounds", "3" if quick else "5"),
        "verifier": run("verifier", "--rounds", "1" if quick else "3"),
        "generator": run("generator", "--rounds", "2" if quick else "3"),
        "overhead": run("overhead", "--rounds", "2" if quick else "3"),
        "pipeline": run("pipeline", "--steps", "20" if quick else "40"),
        "learner": run("learner", "--rounds", "1" if quick else "3"),
        "vs_trl": run(
            "vs_trl", "--steps", "20" if quick else "40", "--rounds", "1" if quick else "3"
        ),
        "luffy_vs_grpo": run("luffy_vs_grpo", *(QUICK_LUFFY_VS_GRPO if quick else ())),
    }
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
