"""The learner's start: what it loads (training and held-out rows, the planned step count),
what it refuses to start with, each as one ``StartupError`` line (training data that cannot
train: missing, no usable row, fewer rows than one batch, no trace for a trace-only
objective; a fresh start on top of an earlier run of the same name), the loop of ranks
> 0, which only execute rank 0's calls, and how every rank's process ends (``exit_rank``)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, NoReturn

from common.config import LearnerConfig
from common.membership import list_members
from common.shell import MustRestart, ServiceContext, StartupError
from common.transport import stale_run_refusal
from learner.data import BadRows, DataError, Example, load_examples
from learner.evaluation import EvalRounds
from learner.objective import Objective, make_objective
from learner.schedule import planned_steps


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


def total_steps(lc: LearnerConfig, objective: Objective, examples: list[Example]) -> int:
    """The steps the run plans (for the learning-rate schedule and ``luffy status``)."""
    rows = len(examples)
    if not objective.generates:  # SFT trains the rows with a trace
        rows = sum(ex.target is not None for ex in examples)
    return planned_steps(lc.max_steps, lc.max_epochs, rows, lc.batch_prompts)


def eval_rounds(cfg: Any, tokenizer: Any, prompts: Any) -> EvalRounds | None:
    """Held-out evaluation publishing to ``prompts``, or None when none is configured."""
    lc = cfg.learner
    if not (lc.eval_file and lc.eval_every):
        return None
    try:
        examples, _ = load_examples(lc.eval_file)
    except DataError as exc:
        raise StartupError(f"learner.eval_file: {exc}") from None
    return EvalRounds(examples, tokenizer, cfg, prompts)


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


def follow_rank_0(cfg: Any) -> int:
    """Ranks > 0 under torchrun: build the trainer and execute rank 0's calls."""
    from learner.collective import follow
    from learner.train import Trainer

    follow(Trainer(cfg, make_objective(cfg.algorithm)))
    return 0


def exit_rank(code: int) -> NoReturn:
    """End a learner rank's process with ``code``, skipping the interpreter's finalization.

    ``destroy_process_group`` only shuts the groups down: the trainer, its control group and
    FSDP's mesh keep the C++ process groups alive until the interpreter tears down, and gloo's
    objects freed then abort the process now and then (SIGABRT, "terminate called without an
    active exception", seen in CI after runs that had finished and written their results),
    which a supervisor reads as a crash. Everything is written by now: flush and leave."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


__all__ = [
    "RunExists",
    "eval_rounds",
    "exit_rank",
    "follow_rank_0",
    "generator_versions",
    "load_training_data",
    "refuse_to_start_over",
    "state_lost",
    "total_steps",
]
