"""Rank 0 drives every learner rank through one typed handle.

The trainer's collective methods (a training step, gathering the full weights, saving and
loading checkpoints) must run on every rank together, with rank 0's arguments. ``Ranks`` is
rank 0's handle: each of its methods broadcasts a ``Call`` and its arguments over the trainer's
gloo control group, then runs the same method locally. Ranks > 0 sit in ``follow`` and execute
each call as it arrives until ``stop``. With one rank nothing is broadcast.
"""

from __future__ import annotations

import enum
from typing import Any

import torch.distributed as dist

from learner.batch import TrainBatch
from learner.train import StepResult, Trainer


class Call(enum.Enum):
    TRAIN_STEP = "train_step"
    FULL_STATE_DICT = "full_state_dict"
    SAVE = "save"
    LOAD = "load"
    PLAN_STEPS = "plan_steps"
    STOP = "stop"


def _local(trainer: Trainer, call: Call) -> Any:
    return {
        Call.TRAIN_STEP: trainer.train_step,
        Call.FULL_STATE_DICT: trainer.full_state_dict,
        Call.SAVE: trainer.save,
        Call.LOAD: trainer.load,
        Call.PLAN_STEPS: trainer.plan_steps,
    }[call]


class Ranks:
    """Rank 0's handle on all ranks' trainers (``trainer`` is rank 0's own)."""

    def __init__(self, trainer: Trainer):
        if trainer.rank != 0:
            raise ValueError(f"only rank 0 drives the ranks; this is rank {trainer.rank}")
        self.trainer = trainer

    @property
    def step(self) -> int:
        return self.trainer.step

    def train_step(self, batch: TrainBatch) -> StepResult:
        return self._everywhere(Call.TRAIN_STEP, batch)

    def full_state_dict(self, dtype: str | None = None, on_device: bool = False) -> dict:
        """Full HF-named weights on rank 0 (gathered from every rank's shards)."""
        return self._everywhere(Call.FULL_STATE_DICT, dtype, on_device)

    def save(self, root: str, extra: dict[str, Any], keep_last: int, export_hf: bool) -> str:
        return self._everywhere(Call.SAVE, root, extra, keep_last, export_hf)

    def load(self, path: str) -> dict[str, Any]:
        return self._everywhere(Call.LOAD, path)

    def plan_steps(self, total: int) -> None:
        """Every rank's LR schedule plans for ``total`` steps."""
        self._everywhere(Call.PLAN_STEPS, total)

    def stop(self) -> None:
        """Release the followers from ``follow``."""
        self._broadcast(Call.STOP, ())

    def _everywhere(self, call: Call, *args: Any) -> Any:
        self._broadcast(call, args)
        return _local(self.trainer, call)(*args)

    def _broadcast(self, call: Call, args: tuple) -> None:
        if self.trainer.world > 1:
            dist.broadcast_object_list([(call.value, args)], src=0, group=self.trainer.control)


def follow(trainer: Trainer) -> None:
    """On ranks > 0: execute rank 0's calls until it sends ``stop``."""
    while True:
        msg: list[Any] = [None]
        dist.broadcast_object_list(msg, src=0, group=trainer.control)
        name, args = msg[0]
        call = Call(name)
        if call is Call.STOP:
            return
        _local(trainer, call)(*args)


__all__ = ["Call", "Ranks", "follow"]
