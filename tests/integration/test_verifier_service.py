"""Verifier processes (the real `luffy verifier`) against the real Redis."""

import signal

import httpx
import pytest

from common.membership import list_members
from common.schemas import Rollout, decode_scored, encode_rollout
from common.transport import Keys, StreamPublisher
from tests.integration.helpers import spawn, wait_for


def start_verifier(redis_url, run_name, tmp_path, *extra):
    return spawn(
        "-m",
        "services.verifier",
        "--redis.url",
        redis_url,
        "--run.name",
        run_name,
        "--run.output_dir",
        str(tmp_path),
        "--redis.claim_idle_ms",
        "1000",
        "--verifier.workers",
        "1",
        *extra,
    )


def rollouts(n):
    for i in range(n):
        text = f"<think>step</think> The answer is \\boxed{{\\frac{{{i}}}{{2}}}}."
        gold = str(i / 2) if i % 3 else "-1"
        yield Rollout(f"task-{i}/0", f"task-{i}", 0, [1, 2], [3, 4], [-0.1, -0.2], text, gold, 0)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
def test_two_verifiers_share_work_and_a_dead_or_hung_one_loses_nothing(
    fault, redis_url, run_name, resilient, rclient, tmp_path, faults
):
    """SIGKILL: the survivor reclaims the victim's rollouts. SIGSTOP: the same while it hangs;
    woken, it finishes and commits what it held, which is acked without a second verdict."""
    keys = Keys(run_name)
    n = 600
    victim = start_verifier(redis_url, run_name, tmp_path, "--verifier.id", "victim")
    survivor = start_verifier(redis_url, run_name, tmp_path, "--verifier.id", "survivor")
    scored = keys.stream("scored")
    try:
        # both consume from the start: one that came up late could find the work all done
        wait_for(lambda: len(list_members(resilient, keys, "verifier")) == 2, 120, "verifiers")
        StreamPublisher(resilient, keys, "rollouts").publish(
            [(r.rollout_id, encode_rollout(r)) for r in rollouts(n)]
        )

        def victim_mid_work():
            consumers = rclient.xinfo_consumers(keys.stream("rollouts"), "verifiers")
            held = {c["name"].decode(): c["pending"] for c in consumers}
            by_victim = sum(
                decode_scored(f[b"d"]).verifier_id == "victim" for _, f in rclient.xrange(scored)
            )
            return held.get("victim", 0) > 0 and by_victim >= 10

        wait_for(victim_mid_work, 60, "the victim to have scored some and hold more")
        victim.send_signal(getattr(signal, fault))
        if fault == "SIGKILL":
            victim.wait()
        wait_for(lambda: rclient.xlen(scored) >= n, 90, "all rollouts scored")
        if fault == "SIGSTOP":
            victim.send_signal(signal.SIGCONT)
            pending = keys.stream("rollouts")
            wait_for(lambda: rclient.xpending(pending, "verifiers")["pending"] == 0, 60, "acks")
        members = list_members(resilient, keys, "verifier")
        base = f"http://127.0.0.1:{members[0]['port']}"
        status = httpx.get(f"{base}/status").json()
    finally:
        stop(victim)
        stop(survivor)
    entries = rclient.xrange(scored)
    ids = [e[1][b"k"].decode() for e in entries]
    assert len(ids) == n and len(set(ids)) == n  # none lost, none scored twice
    by_id = {
        decode_scored(e[1][b"d"]).rollout.rollout_id: decode_scored(e[1][b"d"]) for e in entries
    }
    assert by_id["task-4/0"].status == "ok" and by_id["task-4/0"].reward == 1.0
    assert by_id["task-3/0"].status == "wrong" and by_id["task-3/0"].reward == 0.0
    producers = {s.verifier_id for s in by_id.values()}
    assert producers == {"victim", "survivor"}  # the work was shared
    assert status["id"] == "survivor" and status["counters"]["reclaimed"] > 0
    assert rclient.xpending(keys.stream("rollouts"), "verifiers")["pending"] == 0
    faults.add(
        f"verifier {fault} mid-work",
        injected=1,
        survived=1,
        lost=n - len(set(ids)),
        duplicated=len(ids) - len(set(ids)),
        reclaimed=status["counters"]["reclaimed"],
    )


def test_verify_endpoint_and_metrics_of_a_running_verifier(
    redis_url, run_name, resilient, tmp_path
):
    proc = start_verifier(redis_url, run_name, tmp_path, "--verifier.max_answer_chars", "1000")
    try:
        members = wait_for(lambda: list_members(resilient, Keys(run_name), "verifier"), 60, "start")
        base = f"http://127.0.0.1:{members[0]['port']}"
        wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200, 30, "ready")
        r = httpx.post(f"{base}/v1/verify", json={"answer": "</think> \\boxed{0.5}", "gold": "1/2"})
        assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["reward"] == 1.0
        r = httpx.post(f"{base}/v1/verify", json={"answer": "\\boxed{2}", "gold": "2"})
        assert r.json()["status"] == "no_think_tag"
        r = httpx.post(f"{base}/v1/verify", json={"answer": "x" * 1001, "gold": "1"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "answer"]
        assert len(r.text) < 1000  # the oversized input is not echoed back
        r = httpx.post(f"{base}/v1/verify", json={"answer": 3, "gold": "1"})
        assert r.status_code == 422 and "valid string" in r.json()["detail"][0]["msg"]
        r = httpx.post(f"{base}/v1/verify", content=b"{" * 2_000_000)
        assert r.status_code == 413
        metrics = httpx.get(f"{base}/metrics").text
        for name in ("scored_total", "score_seconds_bucket", "queue_lag_count", "deadletter_total"):
            assert f"luffy_verifier_{name}" in metrics
    finally:
        stop(proc)


def test_a_verifier_scores_with_a_plugin_named_by_its_entry_point(
    redis_url, run_name, resilient, tmp_path
):
    """``verifier.reward = "json_answer"``: found through the installed ``luffy.rewards``
    entry point, preloaded into the pool's forkserver, scored in the worker processes."""
    proc = start_verifier(redis_url, run_name, tmp_path, "--verifier.reward", "json_answer")
    try:
        members = wait_for(lambda: list_members(resilient, Keys(run_name), "verifier"), 60, "start")
        base = f"http://127.0.0.1:{members[0]['port']}"
        wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200, 30, "ready")
        gold = '{"city": "Paris", "population_m": 2.1}'
        expected = {
            '</think> {"population_m": 2.10, "city": "Paris"}': (1.0, "ok"),
            '</think> {"city": "Lyon", "population_m": 2.1}': (0.0, "wrong"),
            "</think> Paris, 2.1 million": (0.0, "unparsable"),
            '{"city": "Paris", "population_m": 2.1}': (0.0, "no_think_tag"),
        }
        for answer, (reward, status) in expected.items():
            got = httpx.post(f"{base}/v1/verify", json={"answer": answer, "gold": gold}).json()
            assert (got["reward"], got["status"]) == (reward, status), (answer, got)
        assert httpx.get(f"{base}/status").json()["reward"] == "json_answer"
    finally:
        stop(proc)
