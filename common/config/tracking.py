"""``[tracking]``: experiment trackers the learner mirrors its ``metrics.jsonl`` rows to. Each
tracker's sub-section is absent by default; present, even empty (``[tracking.tensorboard]``),
it turns that tracker on. Nothing here imports a tracker's package: a run with tracking off
needs neither installed."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from common.config.base import _Section


class WandbConfig(_Section):
    project: str = Field(default="luffy-async", min_length=1)
    """W&B project the run is logged to."""
    name: str | None = None
    """W&B run name (default: ``run.name``). Every learner start, a resume too, is a W&B run of
    its own under this name."""
    dir: Path | None = None
    """Folder W&B writes its ``wandb/`` folder into (default: the run folder); an offline run
    stays there until ``wandb sync`` uploads it."""
    mode: Literal["online", "offline"] | None = None
    """``online`` (needs ``wandb login`` or ``WANDB_API_KEY``) or ``offline`` (files only, no
    network). Default: W&B's own choice, i.e. ``WANDB_MODE`` when set, else online."""


class TensorBoardConfig(_Section):
    log_dir: Path | None = None
    """Folder of the event files (default: ``<run folder>/tensorboard``); point
    ``tensorboard --logdir`` at it."""


class TrackingConfig(_Section):
    wandb: WandbConfig | None = None
    """Log to Weights & Biases (``[tracking.wandb]``; needs the ``tracking`` extra). Absent: off."""
    tensorboard: TensorBoardConfig | None = None
    """Write TensorBoard event files (``[tracking.tensorboard]``; needs the ``tracking``
    extra). Absent: off."""


__all__ = ["TensorBoardConfig", "TrackingConfig", "WandbConfig"]
