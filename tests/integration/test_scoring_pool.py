"""The scoring pool with real math-verify in real worker processes."""

import os
import signal
import threading
import time

import pytest

from verifier.pool import ScoringPool

NESTED = "<think></think> $" + "{" * 20000 + "1" + "}" * 20000 + "$"
TOWER = "<think></think> \\boxed{10^{10^{10^{10}}}}"
LONG_SUM = "<think></think> " + "1+" * 500_000 + "1"  # a 1 MB answer


@pytest.fixture
def pool():
    p = ScoringPool(workers=2, timeout_s=1.5, stall_s=0.25)
    yield p
    p.close()


def test_scores_concurrently_from_many_threads(pool):
    results = {}

    def run(i):
        results[i] = pool.submit(
            "math", f"<think></think> \\boxed{{{i}}}", str(i % 2), True
        ).result()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i].status for i in range(40)] == ["ok" if i < 2 else "wrong" for i in range(40)]


@pytest.mark.parametrize("answer", [NESTED, TOWER, LONG_SUM], ids=["nested", "tower", "1MB"])
def test_pathological_answers_cost_at_most_the_limit_and_never_stall_others(pool, answer):
    started = time.monotonic()
    slow = [pool.submit("math", answer, "1", True) for _ in range(2)]  # occupy both workers
    quick = [pool.submit("math", "<think></think> \\boxed{7}", "7", True) for _ in range(20)]
    assert all(f.result(timeout=5).status == "ok" for f in quick)
    quick_done = time.monotonic() - started
    verdicts = [f.result(timeout=10) for f in slow]
    slow_done = time.monotonic() - started
    # the quick answers did not wait for the slow ones to hit the limit
    assert quick_done < 1.0, quick_done
    for v in verdicts:
        # some hostile inputs fail fast inside math-verify; none may take longer than the limit
        assert v.status in {"timeout", "error", "unparsable", "wrong"}, v
    assert slow_done < 1.5 + 1.0
    if any(v.status == "timeout" for v in verdicts):
        assert "exceeded 1.5s" in next(v.detail for v in verdicts if v.status == "timeout")
    assert pool.submit("math", "<think></think> \\boxed{3}", "3", True).result(5).status == "ok"


def test_a_timeout_replaces_the_worker(pool):
    verdict = pool.submit("math", TOWER, "1", True).result(timeout=10)
    assert verdict.status == "timeout"
    assert pool.stats.timeouts == 1 and pool.stats.restarts >= 1
    assert pool.alive_workers() == 2


def test_a_worker_that_dies_mid_job_yields_error_not_a_hang(pool):
    job = pool.submit("math", TOWER, "1", True)
    deadline = time.monotonic() + 5
    while not any(s.job is not None for s in pool._slots) and time.monotonic() < deadline:
        time.sleep(0.01)  # wait until a worker has taken the job
    busy = next(s for s in pool._slots if s.job is not None)
    os.kill(busy.process.pid, signal.SIGKILL)
    verdict = job.result(timeout=5)
    assert verdict.status == "error" and "died" in verdict.detail
    assert pool.stats.crashes == 1
    assert pool.submit("math", "<think></think> \\boxed{3}", "3", True).result(5).status == "ok"


def test_reward_plugins_run_by_entry_point_in_the_workers_with_honest_statuses(
    tmp_path, monkeypatch
):
    """Plugins named through the ``luffy.rewards`` entry points: the shipped ``json_answer``
    and two of a test distribution's. ``spawn`` workers read the path as it is now (a
    forkserver keeps the one it started with, and this process may have started one already)."""
    from tests.integration.plugin_rewards import plugin_site

    monkeypatch.syspath_prepend(str(plugin_site(tmp_path)))
    pool = ScoringPool(workers=1, timeout_s=4.0, start_method="spawn")
    try:
        answer = '<think></think> ```json\n{"b": [1, 2], "a": true}\n```'
        ok = pool.submit("json_answer", answer, '{"a": true, "b": [1, 2.0]}', True).result(30)
        assert (ok.reward, ok.status) == (1.0, "ok"), ok
        wrong = pool.submit("json_answer", answer, '{"a": true, "b": [2, 1]}', True).result(30)
        assert (wrong.reward, wrong.status) == (0.0, "wrong"), wrong
        odd = pool.submit("not_a_verdict", answer, "{}", True).result(30)
        assert odd.status == "error" and "returned float, not Verdict" in odd.detail, odd
        started = time.monotonic()
        slow = pool.submit("sleepy", answer, "{}", True).result(30)
        assert slow.status == "timeout" and "exceeded 4s" in slow.detail, slow
        assert time.monotonic() - started < 4.0 + 2.0
        assert pool.stats.timeouts == 1 and pool.alive_workers() == 1
    finally:
        pool.close()


def test_the_configured_plugin_is_imported_once_in_the_forkserver():
    """A fresh process (its forkserver not started yet, as in a verifier): workers find the
    plugin's module already imported, so no job pays for the import inside its time limit."""
    import subprocess
    import sys

    from tests.integration.helpers import REPO

    script = (
        "from verifier.pool import ScoringPool\n"
        "if __name__ == '__main__':\n"
        "    pool = ScoringPool(1, 5.0, preload=['verifier.plugins.json_answer'])\n"
        "    probe = 'tests.integration.plugin_rewards:loaded'\n"
        "    for module in ('verifier.plugins.json_answer', 'verifier.nothing'):\n"
        "        print(pool.submit(probe, '', module, False).result(30).status)\n"
        "    pool.close()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.split() == ["ok", "wrong"], out.stderr[-2000:]
