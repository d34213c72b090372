"""Soak: the CPU stack under `luffy up` for 10 minutes (SOAK_SECONDS to change) with bounded
memory.

Sampled every 20 s after a warm-up (engines built, first checkpoint written): the RSS of every
process the supervisor runs (by role) and Redis's used_memory, plus the length of every stream.
Stated margins, checked at the end:
- RSS of each role: the mean of the last third of the samples is within +15 % + 64 MiB of the
  mean of the first third (allocator noise on a 2-core VM; a leak of one rollout per step would
  show as a steady climb far past it over 10 minutes);
- Redis used_memory grows by less than 32 MiB (the dedupe records of every id seen in the run
  expire after 6 h, so some growth is expected: ~100 bytes per rollout);
- streams do not grow: they saw-tooth between the learner's trims (every 30 s), and the peak
  of the last third is at most 1.5x the peak of the first third; the learner reports trimmed
  entries.
A JSON report with every sample is written next to the run and printed.
"""

import json
import os
import signal
import statistics
import time
import uuid

import httpx
import psutil
import pytest

from common.config import RedisConfig
from common.membership import list_members
from common.transport import Keys, Resilient, delete_run_keys
from services.stack import role_of_command
from tests.integration.helpers import spawn_up, wait_for

SOAK_S = float(os.environ.get("SOAK_SECONDS", "600"))
SAMPLE_EVERY_S = 20
WARMUP_S = 90
STREAMS = ("prompts", "rollouts", "scored")
STREAM_GROWTH = 1.5
RSS_RATIO, RSS_SLACK = 1.15, 64 << 20
REDIS_GROWTH = 32 << 20


def role_of(proc: psutil.Process) -> str | None:
    try:
        return role_of_command(" ".join(proc.cmdline()))
    except psutil.Error:
        return None


def rss_by_role(up_pid: int) -> dict[str, int]:
    """Sum of RSS per role over each service process and its own children (verifier pool
    workers, vLLM helpers)."""
    totals: dict[str, int] = {}
    for child in psutil.Process(up_pid).children():
        role = role_of(child)
        if role is None:
            continue
        try:
            procs = [child, *child.children(recursive=True)]
            totals[role] = totals.get(role, 0) + sum(p.memory_info().rss for p in procs)
        except psutil.Error:
            continue
    return totals


def take_sample(up_pid: int, resilient: Resilient, keys: Keys, t0: float) -> dict:
    client = resilient.client
    return {
        "t": round(time.monotonic() - t0, 1),
        "rss": rss_by_role(up_pid),
        "redis_used": int(client.info("memory")["used_memory"]),
        "streams": {s: client.xlen(keys.stream(s)) for s in STREAMS},
    }


def alive(up) -> bool:
    assert up.poll() is None, f"luffy up exited early:\n{''.join(up.lines)[-4000:]}"
    return True


def third_means(samples: list[dict], get) -> tuple[float, float]:
    k = max(1, len(samples) // 3)
    return statistics.mean(map(get, samples[:k])), statistics.mean(map(get, samples[-k:]))


def start_stack(run: str, redis_url: str, tmp_path) -> object:
    return spawn_up(
        run,
        redis_url,
        tmp_path,
        tmp_path,
        "--learner.max_steps",
        "100000",
        "--learner.checkpoint_every",
        "20",
        "--learner.keep_last",
        "2",
        "--learner.eval_every",
        "50",
    )


@pytest.mark.slow
def test_soak_memory_and_streams_stay_bounded(redis_url, tmp_path):
    run = f"soak-{uuid.uuid4().hex[:8]}"
    up = start_stack(run, redis_url, tmp_path)
    resilient = Resilient.from_config(RedisConfig(url=redis_url))
    keys = Keys(run)
    samples: list[dict] = []
    try:
        learner = wait_for(lambda: alive(up) and list_members(resilient, keys, "learner"), 300)
        wait_for(lambda: alive(up) and (tmp_path / run / "checkpoints").exists(), 300)
        t0 = time.monotonic()
        while time.monotonic() - t0 < SOAK_S:
            alive(up)
            if time.monotonic() - t0 >= WARMUP_S:
                samples.append(take_sample(up.pid, resilient, keys, t0))
            time.sleep(SAMPLE_EVERY_S)  # the sampling period, not a synchronisation
        status = httpx.get(f"http://127.0.0.1:{learner[0]['port']}/status").json()
    finally:
        up.send_signal(signal.SIGINT)
        out = up.output(timeout=300)
        delete_run_keys(resilient.client, keys)
    assert up.returncode == 0, out[-4000:]
    report = {"soak_s": SOAK_S, "steps": status["step"], "samples": samples}
    for role in ("learner", "generator", "verifier"):
        first, last = third_means(samples, lambda s, r=role: s["rss"].get(r, 0))
        report[f"rss_{role}_mib"] = [round(first / 2**20), round(last / 2**20)]
        assert first > 0, f"no {role} process seen"
        assert last <= first * RSS_RATIO + RSS_SLACK, (role, first, last)
    first, last = third_means(samples, lambda s: s["redis_used"])
    report["redis_used_mib"] = [round(first / 2**20, 1), round(last / 2**20, 1)]
    k = max(1, len(samples) // 3)
    peaks = {
        s: [max(x["streams"][s] for x in part) for part in (samples[:k], samples[-k:])]
        for s in STREAMS
    }
    report["stream_peaks_first_last_third"] = peaks
    report["trimmed_entries"] = status["trimmed_entries"]
    (tmp_path / "soak_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2))
    assert len(samples) >= 3, "the soak was too short to compare thirds"
    assert last - first < REDIS_GROWTH, report["redis_used_mib"]
    assert all(last <= STREAM_GROWTH * first + 100 for first, last in peaks.values()), peaks
    assert status["trimmed_entries"] > 0
