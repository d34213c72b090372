"""A slow verifier (every answer takes 0.25 s of its 0.4 s limit, one scoring worker): the
feeder's in-flight bound holds the queues flat, the learner waits without timing groups out,
and the verifier, the bottleneck, never waits for work (nothing upstream starves it)."""

import time

import httpx

from common.membership import list_members
from common.transport import Keys, stream_depths
from tests.integration.helpers import spawn, stop_services
from tests.integration.slow_reward import DELAY_S
from tests.integration.test_learner_service import learner_args, write_task


def test_a_slow_verifier_keeps_queues_bounded_and_is_never_starved(
    redis_url, run_name, resilient, rclient, tmp_path, tiny_model_dir, faults
):
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
    gen = spawn(
        "-m",
        "services.generator",
        *common,
        "--generator.engine",
        "hf",
        "--generator.max_model_len",
        "256",
    )
    ver = spawn(
        "-m",
        "services.verifier",
        *common,
        "--verifier.workers",
        "1",
        "--verifier.reward",
        "tests.integration.slow_reward:score",
        "--verifier.timeout_s",
        "0.4",
    )
    args = learner_args(redis_url, run_name, tmp_path, tiny_model_dir, data)
    learner = spawn(
        "-m",
        "services.learner",
        *args,
        "--learner.max_steps",
        "8",
        "--learner.checkpoint_every",
        "0",
        "--algorithm.n_on",
        "3",
    )
    per_step, capacity = 4 * (3 + 1), 2 * 4  # samples per step; tasks in flight at most
    backlog, inflight, status = [], [], {}
    try:
        while learner.poll() is None:  # measuring while it runs, not waiting on it
            time.sleep(0.5)
            rollouts = stream_depths(resilient, keys)["rollouts"]
            members = list_members(resilient, keys, "learner")
            if members:
                try:
                    status = httpx.get(f"http://127.0.0.1:{members[0]['port']}/status").json()
                except httpx.HTTPError:  # it finished between the two reads and is stopping
                    continue
                inflight.append(status["inflight"])
                if 1 <= status["step"] < 8:  # steady: after the first step, before the last
                    backlog.append(rollouts["lag"] + rollouts["pending"])
        out = learner.output(timeout=60)
        assert learner.returncode == 0, out[-3000:]
    finally:
        stop_services(learner, gen, ver, timeout=60)
    busy = sum(b > 0 for b in backlog) / len(backlog)
    resolved = status.get("resolved", {})
    assert max(backlog) <= capacity * 4, max(backlog)  # at most what is in flight, unscored
    assert max(inflight) <= capacity
    assert resolved.get("lost", 0) == 0 and resolved.get("incomplete", 0) == 0, resolved
    assert busy >= 0.8, f"the verifier waited for work {1 - busy:.0%} of the time"
    faults.add(
        f"slow verifier ({DELAY_S} s per answer, 0.4 s limit, 1 worker)",
        injected=1,
        survived=1,
        lost=resolved.get("lost", 0),
        duplicated=0,
        max_rollout_backlog=max(backlog),
        bound=capacity * 4,
        max_tasks_in_flight=max(inflight),
        verifier_busy_share=round(busy, 2),
        samples_per_step=per_step,
    )
