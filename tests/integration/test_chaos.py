"""Chaos: SIGKILL generators, verifiers and the learner at seeded random times during a real
`luffy up` training run; the supervisor restarts them (the learner from its checkpoint).

Checked at the end, from what is durable (checkpoint meta, the ledger, Redis):
- every task fed (the ids up to the final cursor) is trained exactly once in the final
  lineage, or recorded as dropped with its reason, or still in flight at the stop;
- nothing is trained twice (duplicates = 0), checkpoint steps and policy versions only grow;
- the run, stopped with Ctrl-C once the kills are done and min_steps trained, ends with a
  checkpoint at its last step, and the held-out reward rose.
A report JSON with the counts is written next to the run and printed.
"""

import json
import os
import random
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.config import RedisConfig
from common.membership import list_members
from common.transport import Keys, Resilient, delete_run_keys
from tests.integration.helpers import spawn_up

SEED = 7
KILLS = 10


def fed_ids(cursor: dict, train_size: int) -> set[str]:
    ids = {f"e{e}-{p}" for e in range(cursor["epoch"]) for p in range(train_size)}
    return ids | {f"e{cursor['epoch']}-{p}" for p in range(cursor["position"])}


@dataclass
class Accounting:
    """What a run's ledger says of every task the feeder fed, up to checkpoint ``meta``."""

    outcomes: Counter  # outcome -> tasks
    duplicates: int  # tasks trained (or dropped) more than once
    fed: set[str]
    seen: set[str]  # in the ledger
    inflight: set[str]  # in flight at the checkpoint

    @property
    def accounted(self) -> set[str]:
        return self.seen | self.inflight


def account(run_dir: Path, meta: dict, train_size: int) -> Accounting:
    seen: Counter = Counter()
    outcomes: Counter = Counter()
    for path in sorted((run_dir / "ledger").glob("step_*.json")):
        for outcome, ids in json.loads(path.read_text()).items():
            outcomes[outcome] += len(ids)
            seen.update(ids)
    return Accounting(
        outcomes,
        sum(c - 1 for c in seen.values() if c > 1),
        fed_ids(meta["feeder"]["cursor"], train_size),
        set(seen),
        {f["task_id"] for f in meta["feeder"]["inflight"]},
    )


def last_step(run_dir) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line).get("step", 0))
        except ValueError:  # a line being written right now
            continue
    return max(steps, default=0)


def kill_something(rng: random.Random, resilient, keys, learner_kills: int) -> str | None:
    roles = ["generator", "verifier"] + (["learner"] if learner_kills < 3 else [])
    role = rng.choice(roles)
    members = list_members(resilient, keys, role)
    if not members:
        return None
    target = rng.choice(members)
    try:
        os.kill(int(target["pid"]), signal.SIGKILL)
    except ProcessLookupError:
        return None
    return role


@pytest.mark.slow
def test_chaos_run_loses_and_duplicates_nothing(redis_url, tmp_path, faults):
    run = f"chaos-{uuid.uuid4().hex[:8]}"
    task = tmp_path / "task"
    min_steps = 150
    up = spawn_up(
        run,
        redis_url,
        tmp_path,
        tmp_path,
        "--learner.max_steps",
        "100000",
        "--learner.checkpoint_every",
        "5",
        "--learner.eval_every",
        "40",
        "--learner.keep_last",
        "2",
        "--learner.group_timeout_s",
        "120",
        "--redis.claim_idle_ms",
        "5000",
        "--sync.timeout_s",
        "30",
        # the single-digit task: its held-out reward rises within the 150-300 steps this run
        # trains, pick2's (the config's) is still ~0.01 at step 150 and "the reward rose"
        # would compare noise
        "--learner.task_kind",
        "pick",
    )
    resilient = Resilient.from_config(RedisConfig(url=redis_url))
    keys = Keys(run)
    rng = random.Random(SEED)
    kills: list[str] = []
    try:
        deadline = time.monotonic() + 1500
        while not list_members(resilient, keys, "learner"):
            assert up.poll() is None and time.monotonic() < deadline, "the stack did not start"
            time.sleep(1)
        # kill until KILLS kills are done and the run has trained min_steps, then Ctrl-C
        while (len(kills) < KILLS or last_step(tmp_path / run) < min_steps) and (
            up.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(rng.uniform(6, 14))  # the chaos schedule itself, not a synchronisation
            if len(kills) < KILLS:
                role = kill_something(rng, resilient, keys, kills.count("learner"))
                if role:
                    kills.append(role)
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
        out = up.output(timeout=300)
    assert up.returncode == 0, out[-4000:]
    assert len(kills) >= KILLS and "learner" in kills, kills

    run_dir = tmp_path / run
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*"))
    final = json.loads((checkpoints[-1] / "meta.json").read_text())
    assert final["step"] >= min_steps
    ledgers = sorted((run_dir / "ledger").glob("step_*.json"))
    ledger_steps = [int(p.stem.split("_")[1]) for p in ledgers]
    assert ledger_steps == sorted(set(ledger_steps)) and ledger_steps[-1] == final["step"]
    train_size = sum(1 for _ in (task / "train.jsonl").open())
    books = account(run_dir, final, train_size)
    outcomes, duplicates, fed = books.outcomes, books.duplicates, books.fed
    accounted, inflight = books.accounted, books.inflight
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    versions = [r["version"] for r in rows]
    evals = [r for r in rows if r["kind"] == "eval"]
    done = {g: resilient.client.zcard(keys.done(g)) for g in ("generators", "verifiers", "learner")}
    report = {
        "kills": dict(Counter(kills)),
        "fed": len(fed),
        "generated_tasks": done["generators"],
        "scored_samples": done["verifiers"],
        "trained": outcomes.get("trained", 0),
        "dropped": {k: v for k, v in outcomes.items() if k != "trained"},
        "in_flight_at_stop": len(inflight),
        "duplicates": duplicates,
        "deadletter": resilient.client.xlen(keys.deadletter),
        "unaccounted": len(fed - accounted),
        "unexpected": len(accounted - fed),
        "held_out": [(e["step"], e["reward_mean"]) for e in evals],
    }
    (tmp_path / "chaos_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    faults.add(
        "SIGKILL chaos under luffy up",
        injected=len(kills),
        survived=len(kills) if up.returncode == 0 else 0,
        lost=report["unaccounted"],
        duplicated=duplicates,
        kills=report["kills"],
    )
    assert duplicates == 0
    assert fed - accounted == set() and accounted - fed == set()
    assert not (books.seen & inflight)
    assert versions == sorted(versions), "policy version went backwards"
    assert evals and evals[-1]["reward_mean"] > evals[0]["reward_mean"]
    delete_run_keys(resilient.client, keys)
