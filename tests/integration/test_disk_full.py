"""A run folder on a disk that fills up during a checkpoint (a 10 MB tmpfs; one checkpoint of
the tiny model takes about 7 MB): the previous checkpoint stays intact and loadable, the error
says what happened, nothing trained since it is acked, the learner retries and stops cleanly
after three failures in a row, and a restart elsewhere resumes from the good checkpoint."""

import shutil
import subprocess

import pytest

from common.transport import Keys
from learner.checkpoint import list_checkpoints
from tests.integration.helpers import spawn
from tests.integration.test_learner_service import (
    learner_args,
    start_helpers,
    stop,
    write_task,
)


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_during_checkpoints_keeps_the_last_good_one_and_acks_nothing_after_it(
    redis_url, run_name, resilient, rclient, tmp_path, tiny_model_dir, small_disk, faults
):
    data = write_task(tmp_path / "train.jsonl")
    gen, ver = start_helpers(redis_url, run_name, tmp_path, tiny_model_dir)
    args = learner_args(redis_url, run_name, small_disk, tiny_model_dir, data)
    try:
        full = spawn(
            "-m", "services.learner", *args, "--learner.max_steps", "12", "--learner.keep_last", "1"
        )
        out = full.output(timeout=400)
        assert full.returncode == 2, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
        said = [line for line in out.splitlines() if "failed" in line]
        assert "checkpoint at step 4 failed" in said[0] and "MB free of 10 MB" in said[0], said
        assert "3 checkpoints in a row failed" in out and out.count("learner stops:") == 1
        run_dir = small_disk / run_name
        assert [p.rsplit("/", 1)[1] for p in list_checkpoints(str(run_dir / "checkpoints"))] == [
            "step_00000002"
        ]
        assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # partial copies removed
        scored = Keys(run_name).stream("scored")
        unacked = rclient.xpending(scored, "learner")["pending"]
        assert unacked >= 4 * 8, unacked  # steps 3-8 were never in a checkpoint: not acked

        # the same run, moved to a disk with room, resumes from the good checkpoint
        roomy = tmp_path / "roomy"
        shutil.copytree(run_dir, roomy / run_name)
        again_args = learner_args(redis_url, run_name, roomy, tiny_model_dir, data)
        again = spawn(
            "-m",
            "services.learner",
            *again_args,
            "--learner.max_steps",
            "4",
            "--learner.resume",
            "true",
        )
        out_again = again.output(timeout=400)
        assert again.returncode == 0, out_again[-3000:]
    finally:
        stop(gen, ver)
    assert "resumed from" in out_again and "step_00000002" in out_again
    assert (roomy / run_name / "checkpoints" / "step_00000004" / "meta.json").is_file()
    faults.add(
        "disk full during checkpoints",
        injected=3,
        survived="stopped cleanly after 3 failed checkpoints; resumed from the good one",
        lost=0,
        duplicated=0,
        unacked_until_resume=unacked,
    )
