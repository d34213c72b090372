"""Redis loses a run's state mid-run (every key of the run deleted, as a restart without
persistence or a flush does): the learner notices within seconds, says so and stops so that
its restart rebuilds the state from its checkpoint (feeding what was in flight again); the
generator and verifier notice too and commit nothing read under the lost state; the run ends
with every fed task trained once or accounted for, and versions never go backwards."""

import json

import httpx

from common.membership import list_members
from common.transport import Keys, delete_run_keys
from tests.integration.helpers import spawn, wait_for
from tests.integration.test_chaos import account
from tests.integration.test_learner_service import learner_args, start_helpers, stop, write_task


def test_a_run_whose_redis_state_is_lost_rebuilds_it_and_loses_nothing(
    redis_url, run_name, resilient, rclient, tmp_path, tiny_model_dir, faults
):
    keys = Keys(run_name)
    data = write_task(tmp_path / "train.jsonl")
    gen, ver = start_helpers(redis_url, run_name, tmp_path, tiny_model_dir)
    args = learner_args(redis_url, run_name, tmp_path, tiny_model_dir, data)
    run_dir = tmp_path / run_name
    try:
        first = spawn("-m", "services.learner", *args, "--learner.max_steps", "12")

        def learner_step():
            members = list_members(resilient, keys, "learner")
            if not members:
                return 0
            return httpx.get(f"http://127.0.0.1:{members[0]['port']}/status").json()["step"]

        wait_for(lambda: learner_step() >= 5, 300, "step 5 (a checkpoint at 4)")
        deleted = delete_run_keys(rclient, keys)
        try:
            out = first.output(timeout=120)
        except Exception:
            raise AssertionError("".join(first.lines[-60:])) from None
        assert first.returncode == 3, out[-3000:]  # stopped on purpose, to be restarted
        assert "Traceback" not in out and "Redis lost the run's state" in out, out[-3000:]
        second = spawn(
            "-m", "services.learner", *args, "--learner.max_steps", "12", "--learner.resume", "true"
        )
        out2 = second.output(timeout=400)
        assert second.returncode == 0, out2[-3000:]
    finally:
        stop(gen, ver)
    gen_log, ver_log = gen.output(timeout=60), ver.output(timeout=60)
    assert "fed its" in out2 and "in-flight tasks again" in out2
    assert "Redis lost the run's state" in gen_log + ver_log  # they noticed too
    meta = json.loads((run_dir / "checkpoints" / "step_00000012" / "meta.json").read_text())
    books = account(run_dir, meta, 60)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    versions = [r["version"] for r in rows]
    assert books.duplicates == 0 and books.fed == books.accounted, books
    assert versions == sorted(versions), "policy version went backwards"
    faults.add(
        "Redis lost the run's state mid-run",
        injected=1,
        survived=1,
        lost=len(books.fed - books.accounted),
        duplicated=books.duplicates,
        keys_deleted=deleted,
        outcomes=dict(books.outcomes),
    )
