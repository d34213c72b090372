"""How long a run trains and how its learning rate moves (pure functions).

``planned_steps``: ``learner.max_steps``, capped by ``learner.max_epochs`` passes over the
rows that train (an SFT run: the rows with a trace). ``lr_factor``: the multiplier of the peak
learning rate at a step: a linear warm-up over ``warmup`` steps, then constant or a cosine
down to ``min_ratio`` at the last planned step (OpenRLHF's ``cosine_with_min_lr``, which
LUFFY's SFT baseline trained with).
"""

from __future__ import annotations

import math


def planned_steps(max_steps: int, max_epochs: int | None, rows: int, batch: int) -> int:
    """Optimizer steps of the run: ``max_steps``, or fewer when ``max_epochs`` passes over
    ``rows`` rows in batches of ``batch`` end first (a last partial batch is a step)."""
    if max_epochs is None:
        return max_steps
    return max(1, min(max_steps, max_epochs * math.ceil(rows / max(1, batch))))


def warmup_steps(warmup_steps: int, warmup_ratio: float | None, total: int) -> int:
    """Warm-up length: ``warmup_ratio`` of the planned steps (rounded) when given."""
    return warmup_steps if warmup_ratio is None else round(warmup_ratio * total)


def lr_factor(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak LR for the update after ``step`` completed steps."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_horizon(planned: int, schedule_steps: int | None) -> int:
    """The step at which the learning-rate schedule ends: ``schedule_steps`` when set (a run
    stopping early on a longer run's schedule), else the run's planned steps."""
    return schedule_steps if schedule_steps is not None else planned


__all__ = ["lr_factor", "planned_steps", "schedule_horizon", "warmup_steps"]
