"""bench/gpu_check.py, the one script for a short GPU lease, runs end to end on this CPU with
the tiny shape: the same code paths (trainer, push gather and packing, sync group, HF engine),
gloo instead of NCCL."""

import json
import subprocess
import sys

from tests.integration.helpers import REPO


def test_gpu_check_runs_on_cpu_with_the_tiny_shape_and_reports_every_figure(tmp_path):
    out = tmp_path / "gpu_check.json"
    cmd = [
        sys.executable,
        "bench/gpu_check.py",
        "--shape",
        "tiny",
        "--steps",
        "2",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    learner, push, gen = report["learner"], report["push"], report["generation"]
    assert learner["finite"] and learner["tokens_per_s"] > 0 and len(learner["step_s_all"]) == 2
    assert learner["tokens_per_step"] == 8 * 8 * (16 + 24)
    assert learner["mfu"] is None and report["device"] == "cpu"  # no peak to divide by here
    assert push["push_bytes"] == 4 * learner["parameters"] and push["dtypes"] == ["float32"]
    assert push["pack_gb_per_s"] > 0 and push["sync_group"] == {**push["sync_group"], "ok": True}
    assert gen["sequences"] == 64 and gen["tokens"] > 0
