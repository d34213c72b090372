"""The TensorBoard tracker: every series of a row as a scalar at the learner's step, in event
files under ``tracking.tensorboard.log_dir`` (default ``<run folder>/tensorboard``). A resumed
run adds an event file to the same folder; TensorBoard shows them as one run. Imported only
when ``[tracking.tensorboard]`` is present."""

from __future__ import annotations

from collections.abc import Mapping

from torch.utils.tensorboard import SummaryWriter

from common.config import Config

# The writer's default (120 s) leaves a live TensorBoard two minutes behind; flushing is a
# buffered write, cheap next to a training step.
FLUSH_SECS = 10


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, cfg: Config):
        log_dir = cfg.tracking.tensorboard.log_dir or cfg.run.run_dir / "tensorboard"
        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir), flush_secs=FLUSH_SECS)

    def log(self, row: Mapping[str, float], step: int) -> None:
        for tag, value in row.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


__all__ = ["TensorBoardTracker"]
