"""Regression test of issue #18: the tiny stack learns and stays learned.

The collapse it guards against (bench/README.md, "luffy_vs_grpo.py"): right answers followed
by text that never stopped were rewarded, the policy learned to stop later, every response ran
into the 40-token cap (truncated share ~1 for 100+ steps from about step 240 with the reward of
the cut answers ~0.9) and the held-out reward fell from 0.95 to 0.45. With a cut response
counted as wrong (``algorithm.truncated = "wrong"``, the tiny config) no cut response is ever
pushed up and responses stay short of the cap.
"""

import itertools
import json
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.integration.helpers import spawn_up

# pick2 (the config's task, three trace copies) first reached 0.9 at steps 320-420 in the bench's
# seed-runs (320-340 on seed 0, this test's)
STEPS = 500
WINDOW = 20


@pytest.mark.slow
def test_the_tiny_run_learns_and_its_diagnostics_stay_in_bounds(redis_url, tmp_path):
    run = f"learned-{uuid.uuid4().hex[:8]}"
    data = Path(tempfile.mkdtemp())
    up = spawn_up(
        run, redis_url, tmp_path, data,
        "--learner.max_steps", str(STEPS), "--learner.checkpoint_every", "0",
    )  # fmt: skip
    out = up.output(timeout=900)
    assert up.returncode == 0, out[-3000:]
    rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").open()]
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    assert len(train) == STEPS
    # no response cut by the cap is ever pushed up (the collapse's fuel)
    assert max(r["truncated_pushed_share"] for r in train) == 0.0
    # responses stay short of the cap: no 20-step stretch after step 150 with a quarter cut
    # (the collapse: ~0.8-1.0 for 100 steps)
    late = [r["truncated_share"] for r in train if r["step"] > 150]
    windows = [sum(late[i : i + WINDOW]) / WINDOW for i in range(len(late) - WINDOW + 1)]
    assert max(windows) < 0.25, max(windows)
    # learned: held-out reward (avg@4 at T 0.6) >= 0.9 (bench/README.md, luffy_vs_grpo.py).
    curve = [(e["step"], e["reward_mean"], e["diverge_top"][:1]) for e in evals]
    assert max(r for _, r, _ in curve) >= 0.9, curve
    # every round says where its wrong samples left the trace: the untrained model's (nearly
    # all: on pick2 it gets one of 256 right now and then), and a learned round's few (the
    # diagnosis of a dip, bench/README.md)
    untrained = evals[0]
    assert untrained["reward_mean"] <= 0.02, untrained
    wrong = round(untrained["samples"] * (1 - untrained["reward_mean"]))
    assert untrained["wrong_vs_trace"] == wrong, untrained
    assert all(e["wrong_vs_trace"] <= e["samples"] * (1 - e["reward_mean"]) + 1e-9 for e in evals)
    assert all(e["version_min"] <= e["version_max"] for e in evals)
    # stays learned: from the first evaluation >= 0.9 on, never two evaluations in a row below
    # the floor of 0.85 and none below 0.5. The collapse stayed down (0.77, 0.09, ...;
    # 0.0-0.8 for 100+ steps), as did gamma 0.1's worst dip (0.28 in this test in CI). With two
    # trace copies what was left on pick2 were one-evaluation flips of one shared step (0.75 at
    # step 500 on seed 3, back to 0.98 twenty steps later; 0.84 on seed 8; 2 of 13 seed-runs);
    # three copies (the config) have not flipped, but the bench's strict floor is its own
    # measure: this test fails on a regression, not on one such flip (bench/README.md).
    after = [r for _, r, _ in curve[next(i for i, (_, r, _) in enumerate(curve) if r >= 0.9) :]]
    assert min(after) >= 0.5, curve
    assert not any(a < 0.85 and b < 0.85 for a, b in itertools.pairwise(after)), curve
