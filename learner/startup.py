"""What the learner refuses to start with, each as one ``StartupError`` line: training data
that cannot train (missing, no usable row, fewer rows than one batch, no trace for a
trace-only objective) and a fresh start on top of an earlier run of the same name."""

from __future__ import annotations

from typing import Any

from common.config import LearnerConfig
from common.membership import list_members
from common.shell import MustRestart, ServiceContext, StartupError
from common.transport import stale_run_refusal
from learner.data import BadRows, DataError, Example, load_examples
from learner.objective import Objective


class RunExists(StartupError):
    """A fresh learner was started on a run name that already has checkpoints or state."""


def load_training_data(lc: LearnerConfig, objective: Objective) -> tuple[list[Example], BadRows]:
    """The training rows, or a StartupError that says why they cannot train."""
    if lc.train_file is None:
        raise StartupError("learner.train_file is required (a .jsonl or .parquet of prompts)")
    try:
        examples, bad_rows = load_examples(lc.train_file)
    except DataError as exc:
        raise StartupError(f"learner.train_file: {exc}") from None
    if lc.batch_prompts > len(examples):
        raise StartupError(
            f"learner.batch_prompts ({lc.batch_prompts}) is larger than the {len(examples)} "
            f"usable rows of {lc.train_file}: every batch would repeat rows"
        )
    if not objective.generates and all(ex.target is None for ex in examples):
        raise StartupError(
            f"algorithm.mode {objective.mode!r} trains on traces only, but no row of "
            f"{lc.train_file} has a 'target'"
        )
    return examples, bad_rows


def refuse_to_start_over(ctx: ServiceContext, ckpt_root: str, checkpoints: list[Any]) -> None:
    """A fresh start on top of an earlier run of the same name would stall (its ids are
    already done downstream) or mix checkpoints: say so instead."""
    run = ctx.config.run.name
    if checkpoints:
        raise RunExists(
            f"run {run!r} already has checkpoints in {ckpt_root} (newest "
            f"{checkpoints[-1]}): continue it with --learner.resume true (luffy up does), "
            "or start a new run with another --run.name"
        )
    refusal = stale_run_refusal(ctx.redis, ctx.keys, ckpt_root)
    if refusal:
        raise RunExists(refusal)


def generator_versions(ctx: ServiceContext) -> int:
    """The newest policy version a live generator reports (Redis may have lost its own)."""
    records = list_members(ctx.redis, ctx.keys, "generator")
    return max((int(r.get("policy_version") or 0) for r in records), default=0)


def state_lost(why: str, newest_checkpoint: str | None) -> MustRestart:
    """Redis lost the run's state: the learner stops so that its restart rebuilds it."""
    then = f"checkpoint {newest_checkpoint}" if newest_checkpoint else "the start (no checkpoint)"
    return MustRestart(
        f"{why}. Restarting the learner (luffy up does; else luffy learner --resume) "
        f"rebuilds it from {then}: what was in flight is fed again"
    )


__all__ = [
    "RunExists",
    "generator_versions",
    "load_training_data",
    "refuse_to_start_over",
    "state_lost",
]
