"""Experiment trackers (learner.tracking): rows flattened to numbers, each backend run for real
(TensorBoard event files, W&B offline) and read back from what it wrote, tracking off importing
neither package, and the start refused when a configured tracker cannot run."""

import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from common.config import ConfigError, load_config
from common.metrics import Metrics
from common.shell import StartupError
from learner.tracking import Trackers, flatten_numbers, make_trackers, tracker_row
from tests.tracking_files import tensorboard_scalars, wandb_env, wandb_offline_run

REPO = Path(__file__).resolve().parents[2]
EVAL_ROW = {
    "time": 1700000000.5,
    "version": 3,
    "kind": "eval",
    "step": 4,
    "reward_mean": 0.25,
    "pass_at_k": 0.5,
    "reward_by_source": {"add": 0.5, "pick": 0.0},
    "prompts": 8,
    "complete": True,
    "status_counts": {"correct": 2, "wrong": 6},
    "note": "text is no series",
    "ids": [1, 2],
}


def test_rows_flatten_to_numbers_under_their_kind():
    assert flatten_numbers({"a": 1, "b": {"c": 2.5, "d": {"e": False}}, "s": "x", "n": None}) == {
        "a": 1.0,
        "b/c": 2.5,
        "b/d/e": 0.0,
    }
    step, values = tracker_row(EVAL_ROW)
    assert step == 4
    assert values == {
        "eval/version": 3.0,
        "eval/reward_mean": 0.25,
        "eval/pass_at_k": 0.5,
        "eval/reward_by_source/add": 0.5,
        "eval/reward_by_source/pick": 0.0,
        "eval/prompts": 8.0,
        "eval/complete": 1.0,
        "eval/status_counts/correct": 2.0,
        "eval/status_counts/wrong": 6.0,
    }  # kind, step and the wall clock are how rows are laid out, not series
    assert tracker_row({"kind": "train", "step": 2, "loss": 0.5}) == (2, {"train/loss": 0.5})


def tracking_config(tmp_path, *overrides):
    return load_config(
        overrides=["--run.name", "t", "--run.output_dir", str(tmp_path), *overrides], environ={}
    )


TRAIN_ROWS = [
    {"kind": "train", "step": 1, "loss": 0.5, "reward_mean": 0.0, "skipped": False},
    {"kind": "train", "step": 2, "loss": 0.25, "reward_mean": 0.125, "skipped": False},
]
LATE_EVAL = {"kind": "eval", "step": 1, "reward_mean": 0.75, "reward_by_source": {"add": 0.75}}


def test_tensorboard_tracker_writes_event_files_tensorboard_reads(tmp_path):
    cfg = tracking_config(tmp_path, "--tracking.tensorboard", "{}")
    trackers = Trackers(make_trackers(cfg))
    for row in [*TRAIN_ROWS, LATE_EVAL]:  # the eval of step 1 finishes after step 2
        trackers.log_row(row)
    trackers.close()
    scalars = tensorboard_scalars(tmp_path / "t" / "tensorboard")  # the default log_dir
    assert scalars["train/loss"] == [(1, 0.5), (2, 0.25)]
    assert scalars["train/reward_mean"] == [(1, 0.0), (2, 0.125)]
    assert scalars["train/skipped"] == [(1, 0.0), (2, 0.0)]
    assert scalars["eval/reward_mean"] == [(1, 0.75)]
    assert scalars["eval/reward_by_source/add"] == [(1, 0.75)]


def test_wandb_tracker_offline_logs_every_row_at_the_learners_step(tmp_path, monkeypatch):
    for name, value in wandb_env(tmp_path).items():  # WANDB_MODE=offline from the environment
        monkeypatch.setenv(name, value)
    cfg = tracking_config(
        tmp_path, "--tracking.wandb.dir", str(tmp_path / "wb"), "--learner.lr", "0.5"
    )
    assert cfg.tracking.wandb.mode is None and cfg.tracking.tensorboard is None
    trackers = Trackers(make_trackers(cfg))
    for row in [*TRAIN_ROWS, LATE_EVAL]:
        trackers.log_row(row)
    trackers.close()
    config, history = wandb_offline_run(tmp_path / "wb")
    assert config["learner"]["lr"] == 0.5  # the resolved config is the run's config
    rows = [{k: v for k, v in h.items() if not k.startswith("_")} for h in history]
    assert rows == [
        {"step": 1, "train/loss": 0.5, "train/reward_mean": 0.0, "train/skipped": 0.0},
        {"step": 2, "train/loss": 0.25, "train/reward_mean": 0.125, "train/skipped": 0.0},
        # W&B keeps a row logged at an earlier learner step: it is a series, not W&B's step
        {"step": 1, "eval/reward_mean": 0.75, "eval/reward_by_source/add": 0.75},
    ]


class BrokenTracker:
    name = "broken"

    def __init__(self):
        self.calls = 0

    def log(self, row, step):
        self.calls += 1
        raise ConnectionError("tracker backend went away")

    def close(self):
        raise ConnectionError("still gone")


def test_a_failing_tracker_is_dropped_once_and_training_rows_go_on(tmp_path, caplog):
    from learner.batch import GroupAssembler, TrainBatch
    from learner.telemetry import LearnerTelemetry
    from learner.train import StepResult

    cfg = tracking_config(tmp_path, "--tracking.tensorboard.log_dir", str(tmp_path / "tb"))
    path = tmp_path / "metrics.jsonl"
    # the loop's parts are read only by gauges and /status: empty stand-ins will do
    feeder, books = SimpleNamespace(inflight={}), SimpleNamespace(resolved={})
    consumer = SimpleNamespace(stats=SimpleNamespace(deadletter_reasons={}))
    telemetry = LearnerTelemetry(
        Metrics("learner"), path, lambda: 7, feeder, GroupAssembler(60.0), books, consumer
    )
    broken = BrokenTracker()
    telemetry.trackers = Trackers([broken, *make_trackers(cfg)])
    with caplog.at_level(logging.ERROR, logger="learner.tracking"):
        for step in (1, 2):
            batch = TrainBatch([], 4, {"reward_mean": 0.5})
            telemetry.step(StepResult(step=step, skipped=False, loss=1.0 / step), batch)
        telemetry.evaluation({**LATE_EVAL, "pass_at_k": 1.0, "prompts": 4}, 4)
        telemetry.close()
    assert broken.calls == 1
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1 and "broken" in failures[0] and "went away" in failures[0]
    rows = [json.loads(line) for line in path.open()]
    assert [(r["kind"], r["step"]) for r in rows] == [("train", 1), ("train", 2), ("eval", 1)]
    scalars = tensorboard_scalars(tmp_path / "tb")
    assert scalars["train/loss"] == [(1, 1.0), (2, 0.5)] and scalars["eval/pass_at_k"] == [(1, 1.0)]
    assert scalars["train/version"] == [(1, 7.0), (2, 7.0)]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_tracking_off_imports_neither_package():
    out = run_python(
        "import sys\n"
        "from common.config import load_config\n"
        "import learner.worker, learner.telemetry\n"
        "from learner.tracking import Trackers, make_trackers\n"
        "trackers = Trackers(make_trackers(load_config(environ={})))\n"
        "trackers.log_row({'kind': 'train', 'step': 1, 'loss': 0.5})\n"
        "trackers.close()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'wandb', 'tensorboard'}))\n"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("section", ["wandb", "tensorboard"])
def test_a_tracker_whose_package_is_missing_refuses_the_start(section, tmp_path):
    # None in sys.modules makes `import <package>` fail as if it were not installed
    out = run_python(
        f"import sys\nsys.modules[{section!r}] = None\n"
        "from common.config import load_config\n"
        "from common.shell import StartupError\n"
        "from learner.tracking import make_trackers\n"
        f"cfg = load_config(overrides=['--run.output_dir', {str(tmp_path)!r},"
        f" '--tracking.{section}', '{{}}'], environ={{}})\n"
        "try:\n    make_trackers(cfg)\n"
        "except StartupError as exc:\n    print(exc)\n"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    message = out.stdout.strip()
    assert message.startswith(f"tracking.{section} is set but the {section} package cannot")
    assert "pip install 'luffy-async[tracking]'" in message and "\n" not in message
    assert not (tmp_path / "tiny").exists()  # nothing was started


def test_a_tracker_that_cannot_start_refuses_the_start_and_closes_the_others(tmp_path, monkeypatch):
    for name, value in wandb_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    (tmp_path / "file").write_text("not a folder")
    cfg = tracking_config(
        tmp_path,
        "--tracking.wandb.dir",
        str(tmp_path / "wb"),
        "--tracking.tensorboard.log_dir",
        str(tmp_path / "file" / "tb"),
    )
    with pytest.raises(StartupError, match=r"^tracking\.tensorboard: the tracker cannot start"):
        make_trackers(cfg)
    import wandb

    assert wandb.run is None  # the W&B run built first was finished
    assert wandb_offline_run(tmp_path / "wb")[1] == []


def test_tracking_sections_are_off_unless_present_and_checked_like_any_other(tmp_path):
    assert load_config(environ={}).tracking.model_dump() == {"wandb": None, "tensorboard": None}
    path = tmp_path / "c.toml"
    path.write_text('[tracking.wandb]\nmode = "offline"\n[tracking.tensorboard]\n')
    tracking = load_config(path, environ={}).tracking
    assert tracking.wandb.mode == "offline" and tracking.wandb.project == "luffy-async"
    assert tracking.tensorboard.log_dir is None  # on, with the default folder
    with pytest.raises(ConfigError, match=r"did you mean 'tracking\.tensorboard\.log_dir'"):
        load_config(path, ["--tracking.tensorboard.logdir", "x"], environ={})
    with pytest.raises(ConfigError, match=r"'tracking\.wandb\.mode'"):
        load_config(path, ["--tracking.wandb.mode", "sometimes"], environ={})
