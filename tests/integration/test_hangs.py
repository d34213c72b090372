"""Hung, not dead: SIGSTOP instead of SIGKILL (real processes, real Redis, the tiny model).

- A hung generator costs a push a few seconds (it stops heartbeating), not ``sync.timeout_s``;
  when it wakes it learns it was left out, takes no tasks and is not ready while behind, and
  serves again once a push brings it back.
- A hung verifier's rollouts are reclaimed by the other; when it wakes, its late verdicts are
  acked without being scored twice.
- A hung learner rank fails the learner within ``learner.collective_timeout_s``.
Each test adds its counts to the fault report (see conftest).
"""

import json
import os
import signal
import time

import httpx
import psutil

from common.config import SyncConfig
from common.membership import list_members
from common.transport import Keys
from common.transport.weight_sync import SyncBoard
from learner.broadcast import WeightBroadcaster
from tests.integration.helpers import spawn, stop_services, wait_for
from tests.integration.test_generator import (
    publish_tasks,
    rollouts_of,
    start_generator,
    state_dict,
    stop,
    wait_registered,
)

TIMEOUT_S = 60.0


def test_a_hung_generator_costs_seconds_and_rejoins_only_when_it_caught_up(
    redis_url, run_name, resilient, rclient, tmp_path, tiny_model_dir, other_model_dir, faults
):
    keys = Keys(run_name)
    fast = ["--generator.engine", "hf", "--redis.claim_idle_ms", "3000"]
    awake = start_generator(redis_url, run_name, tiny_model_dir, tmp_path, "awake", *fast)
    hung = start_generator(redis_url, run_name, tiny_model_dir, tmp_path, "hung", *fast)
    weights = [state_dict(tiny_model_dir), state_dict(other_model_dir)]
    try:
        for gid, proc in (("awake", awake), ("hung", hung)):
            wait_registered(resilient, keys, gid, proc)
        broadcaster = WeightBroadcaster(
            SyncBoard(resilient, keys), SyncConfig(timeout_s=TIMEOUT_S), heartbeat_s=2.0
        )
        assert broadcaster.push(1, weights[1].items()).members == ["awake", "hung"]
        hung.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        result = broadcaster.push(2, weights[0].items())
        push_s = time.monotonic() - started
        assert result.ok and result.members == ["awake"] and "hung" in result.failed, result
        assert push_s < 20, f"a push waited {push_s:.0f}s for a hung member"
        assert "hung" in broadcaster.silent
        for version in (3, 4):  # the hung one is left out without waiting for it
            assert broadcaster.push(version, weights[version % 2].items()).members == ["awake"]
        hung.send_signal(signal.SIGCONT)
        port = wait_registered(resilient, keys, "hung", hung)["port"]

        def not_ready_reasons():
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz")
            return ready.status_code == 503 and ready.json()["reasons"]

        (reason,) = wait_for(not_ready_reasons, 30, "the woken generator to see it is behind")
        assert "serving policy version 1, the learner is at 4" in reason
        assert "left out of weight-sync epoch" in reason
        publish_tasks(resilient, keys, 6)
        wait_for(lambda: rclient.xlen(keys.stream("rollouts")) == 24, 120, "rollouts")
        stale = [r for r in rollouts_of(rclient, keys) if r.policy_version != 4]
        assert stale == [], "a generator behind the learner sampled"
        assert wait_for(broadcaster.newcomers, 30, "the learner to see it again") == ["hung"]
        back = broadcaster.push(5, weights[1].items())
        assert back.ok and back.members == ["awake", "hung"], back
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, 30, "ready"
        )
        status = httpx.get(f"http://127.0.0.1:{port}/status").json()
    finally:
        if hung.poll() is None:
            hung.send_signal(signal.SIGCONT)
        stop(hung)
        stop(awake)
    assert status["policy_version"] == 5 and status["sync"]["dropped_at_epoch"] is None
    faults.add(
        "generator SIGSTOP during pushes",
        injected=1,
        survived=1,
        lost=0,
        duplicated=0,
        push_with_hung_member_s=round(push_s, 1),
        stale_samples_trained=len(stale),
    )


def test_a_hung_learner_rank_fails_the_learner_within_its_collective_timeout(
    tmp_path, tiny_model_dir, faults
):
    out = tmp_path / "hang.json"
    learner = spawn(
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "-m",
        "tests.integration.train_procs",
        str(tiny_model_dir),
        str(out),
        "100000",
        "--collective-timeout",
        "8",
    )
    try:

        def rank_1():
            for child in psutil.Process(learner.pid).children(recursive=True):
                if (
                    "train_procs" in " ".join(child.cmdline())
                    and child.environ().get("RANK") == "1"
                ):
                    return child
            return None

        victim = wait_for(rank_1, 120, "rank 1 to start")
        wait_for(lambda: any("step 3 " in line for line in learner.lines), 120, "training")
        os.kill(victim.pid, signal.SIGSTOP)
        started = time.monotonic()
        output = learner.output(timeout=120)
        failed_after = time.monotonic() - started
    finally:
        if learner.poll() is None:
            learner.kill()
    assert learner.returncode != 0 and not out.exists()
    assert failed_after < 8 + 60, failed_after
    assert "timed out" in output.lower() or "timeout" in output.lower(), output[-3000:]
    faults.add(
        "learner rank SIGSTOP mid-run",
        injected=1,
        survived="the learner exits non-zero; luffy up restarts it from its checkpoint",
        lost=0,
        duplicated=0,
        failed_loudly_after_s=round(failed_after, 1),
    )


def test_a_run_goes_on_past_a_hung_generator_and_takes_it_back_caught_up(
    redis_url, run_name, resilient, rclient, tmp_path, tiny_model_dir, faults
):
    """The issue's probe under a real learner: one of two generators hangs for a while. The
    learner keeps training with the other (each push costs seconds, not sync.timeout_s),
    nothing beyond the hard lag bound is trained, and the woken generator is brought back by
    the learner and serves the current version."""
    from tests.integration.test_learner_service import learner_args, write_task

    keys = Keys(run_name)
    data = write_task(tmp_path / "train.jsonl")
    common = [
        "--redis.url",
        redis_url,
        "--run.name",
        run_name,
        "--run.output_dir",
        str(tmp_path),
        "--model.path",
        str(tiny_model_dir),
    ]
    gen_args = [
        "--generator.engine",
        "hf",
        "--generator.max_model_len",
        "256",
        "--redis.claim_idle_ms",
        "3000",
    ]
    gens = {
        gid: spawn("-m", "services.generator", *common, *gen_args, "--generator.id", gid)
        for gid in ("steady", "hung")
    }
    ver = spawn("-m", "services.verifier", *common, "--verifier.workers", "1")
    args = learner_args(redis_url, run_name, tmp_path, tiny_model_dir, data)
    learner = spawn(
        "-m",
        "services.learner",
        *args,
        "--learner.max_steps",
        "30",
        "--learner.checkpoint_every",
        "0",
        "--sync.timeout_s",
        "60",
        "--algorithm.max_off_policy_steps",
        "1",
        "--algorithm.max_corrected_lag",
        "2",
    )

    def learner_status():
        members = list_members(resilient, keys, "learner")
        return httpx.get(f"http://127.0.0.1:{members[0]['port']}/status").json() if members else {}

    def generator_status(gid):
        for m in list_members(resilient, keys, "generator"):
            if m["id"] == gid:
                return httpx.get(f"http://127.0.0.1:{m['port']}/status").json()
        return {}

    try:
        for gid, proc in gens.items():
            wait_registered(resilient, keys, gid, proc)
        wait_for(lambda: learner_status().get("step", 0) >= 3, 300, "training")
        gens["hung"].send_signal(signal.SIGSTOP)
        stopped_at, started = learner_status()["step"], time.monotonic()
        wait_for(lambda: learner_status().get("step", 0) >= stopped_at + 5, 300, "steps")
        five_steps_s = time.monotonic() - started
        gens["hung"].send_signal(signal.SIGCONT)

        def caught_up():
            status = generator_status("hung")
            return status.get("policy_version", -1) >= learner_status()["policy_version"] - 1

        wait_for(caught_up, 120, "the woken generator to be brought back")
        out = learner.output(timeout=600)
        assert learner.returncode == 0, out[-3000:]
    finally:
        if gens["hung"].poll() is None:
            gens["hung"].send_signal(signal.SIGCONT)
        stop_services(learner, *gens.values(), ver, timeout=60)
    rows = [json.loads(x) for x in (tmp_path / run_name / "metrics.jsonl").read_text().splitlines()]
    lags = [r.get("lag_max", 0) for r in rows if r["kind"] == "train"]
    assert max(lags) <= 2, lags  # nothing past the hard bound was trained
    assert five_steps_s < 60, f"five steps took {five_steps_s:.0f}s with a hung generator"
    faults.add(
        "generator SIGSTOP under a training learner",
        injected=1,
        survived=1,
        lost=0,
        duplicated=0,
        five_steps_with_it_hung_s=round(five_steps_s, 1),
        max_trained_lag=max(lags),
    )
