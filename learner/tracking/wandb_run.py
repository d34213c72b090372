"""The W&B tracker: one W&B run per learner start (``wandb.init``; ``WANDB_MODE=offline`` or
``tracking.wandb.mode = "offline"`` keeps it to files), the resolved config (secrets masked) as
the run's config, every row logged against the learner's step. Imported only when
``[tracking.wandb]`` is present."""

from __future__ import annotations

from collections.abc import Mapping

import wandb

from common.config import Config

# The learner's step, logged as a series of every row: W&B's own step only moves forward and
# drops a row logged at an earlier one, which an evaluation of step N finishing after steps
# N+1.. would be. Every series is plotted against this instead.
STEP = "step"


class WandbTracker:
    name = "wandb"

    def __init__(self, cfg: Config):
        wc = cfg.tracking.wandb
        folder = wc.dir or cfg.run.run_dir
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=wc.project,
            name=wc.name or cfg.run.name,
            dir=str(folder),
            mode=wc.mode,
            config=cfg.to_toml_dict(),
        )
        self.run.define_metric(STEP, hidden=True)
        self.run.define_metric("*", step_metric=STEP)

    def log(self, row: Mapping[str, float], step: int) -> None:
        self.run.log({STEP: step, **row})

    def close(self) -> None:
        self.run.finish()


__all__ = ["WandbTracker"]
