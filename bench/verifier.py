"""Verifier throughput: scored/s of 1 and 2 `luffy verifier` processes fed through Redis vs raw
math-verify calls in one process, on the same answers, in the same run. Prints JSON.

    .venv/bin/python bench/verifier.py [--answers 2000] [--url redis://127.0.0.1:6379/0]

Each verifier process runs one scoring worker (``verifier.workers = 1``; the pool may add one
more while a slow answer holds it), so "1 process" is about one core of math-verify plus the
service around it. The raw loop runs in a fresh process warmed like a verifier's workers
(sympy's caches make a warm process faster than a cold one).
Targets (issue #3): 1 process >= 0.9 x raw; 2 processes >= 1.7 x 1 process.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import redis

from common.config import RedisConfig
from common.membership import list_members
from common.schemas import Rollout, encode_rollout
from common.transport import Keys, Resilient, StreamPublisher, delete_run_keys

REPO = Path(__file__).resolve().parents[1]
# this file shares its name with a package: import the package, not the script
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
from common.machine import describe  # noqa: E402

FORMS = [
    ("\\boxed{{{a}}}", "{a}"),
    ("\\boxed{{\\frac{{{a}}}{{{b}}}}}", "{a}/{b}"),
    ("The answer is ${a}$.", "{a}"),
    ("\\boxed{{{a}\\%}}", "{a}"),
    ("\\boxed{{({a}, {b}]}}", "({a},{b}]"),
    ("\\boxed{{\\{{{a}, {b}\\}}}}", "\\{{{b},{a}\\}}"),
    ("\\boxed{{x = {a}}}", "{a}"),
    ("\\boxed{{{a} \\text{{ cm}}}}", "{a}"),
    ("\\boxed{{\\sqrt{{{a}}}}}", "\\sqrt{{{a}}}"),
    ("no final answer", "{a}"),
]


def make_answers(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        answer, gold = rng.choice(FORMS)
        a, b = rng.randint(1, 99), rng.randint(100, 199)
        if rng.random() < 0.3:  # some wrong answers
            a += 1
        out.append((f"<think>work</think> {answer.format(a=a, b=b)}", gold.format(a=a, b=b)))
    return out


def raw_rate(answers: list[tuple[str, str]]) -> float:
    """math-verify in a loop, in a fresh process warmed exactly like a verifier's workers."""
    code = (
        "import json, sys, time\n"
        "import verifier.warm\n"
        "from math_verify import parse, verify\n"
        "answers = json.load(sys.stdin)\n"
        "start = time.perf_counter()\n"
        "for response, gold in answers:\n"
        "    answer = response.rpartition('</think>')[2]\n"
        "    verify(parse('$' + gold + '$', parsing_timeout=None),\n"
        "           parse(answer, parsing_timeout=None), timeout_seconds=None)\n"
        "print(len(answers) / (time.perf_counter() - start))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(answers),
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def start_verifiers(url: str, run: str, count: int, out_dir: str) -> list[subprocess.Popen]:
    procs = []
    for i in range(count):
        args = [
            sys.executable,
            "-m",
            "services.verifier",
            "--redis.url",
            url,
            "--run.name",
            run,
            "--run.output_dir",
            out_dir,
            "--verifier.workers",
            "1",
            "--verifier.id",
            f"b{i}",
            "--run.log_level",
            "WARNING",
        ]
        procs.append(subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL))
    return procs


def wait_ready(resilient: Resilient, keys: Keys, count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        members = list_members(resilient, keys, "verifier")
        ok = [m for m in members if m.get("port")]
        if len(ok) == count and all(
            httpx.get(f"http://127.0.0.1:{m['port']}/readyz").status_code == 200 for m in ok
        ):
            return
        time.sleep(0.1)
    raise RuntimeError("verifiers did not become ready")


def service_rate(url: str, answers: list[tuple[str, str]], count: int) -> float:
    cfg = RedisConfig(url=url)
    resilient = Resilient.from_config(cfg)
    keys = Keys(f"bench-ver-{uuid.uuid4().hex[:8]}")
    with tempfile.TemporaryDirectory() as out_dir:
        procs = start_verifiers(url, keys.run, count, out_dir)
        try:
            wait_ready(resilient, keys, count)
            rollouts = [
                Rollout(f"t{i}/0", f"t{i}", 0, [1], [2], [-0.5], text, gold, 0)
                for i, (text, gold) in enumerate(answers)
            ]
            payloads = [(r.rollout_id, encode_rollout(r)) for r in rollouts]
            client: redis.Redis = resilient.client
            start = time.perf_counter()
            StreamPublisher(resilient, keys, "rollouts").publish(payloads)
            while client.xlen(keys.stream("scored")) < len(answers):
                time.sleep(0.005)
            elapsed = time.perf_counter() - start
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(30)
            delete_run_keys(resilient.client, keys)
    return len(answers) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answers", type=int, default=2000)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    answers = make_answers(args.answers)
    runs: dict[str, list[float]] = {"raw": [], "one": [], "two": []}
    for _ in range(args.rounds):  # interleaved: drift on the machine hits all three alike
        runs["raw"].append(raw_rate(answers))
        runs["one"].append(service_rate(args.url, answers, 1))
        runs["two"].append(service_rate(args.url, answers, 2))
    raw, one, two = (statistics.median(runs[k]) for k in ("raw", "one", "two"))
    result = {
        "bench": "verifier",
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d"),
        "answers": len(answers),
        "raw_scored_per_s": round(raw, 1),
        "one_process_scored_per_s": round(one, 1),
        "two_processes_scored_per_s": round(two, 1),
        "one_vs_raw": round(one / raw, 3),
        "two_vs_one": round(two / one, 3),
        "rounds": args.rounds,
        "runs": {k: [round(v, 1) for v in vs] for k, vs in runs.items()},
        "targets": {"one_vs_raw": 0.9, "two_vs_one": 1.7},
    }
    result["meets_targets"] = result["one_vs_raw"] >= 0.9 and result["two_vs_one"] >= 1.7
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
