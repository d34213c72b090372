"""The demo's inputs, built offline: the tiny random Qwen2 model (``tiny_model``) and the
synthetic task with its worked traces (``tiny_task``). ``luffy init`` (and compose's ``init``
service) call ``prepare_inputs``; tests and benchmarks build them directly. They import
transformers and tokenizers, so they live here, above the role packages, not in common/."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from common.config import Config

log = logging.getLogger("luffy.init")


def ensure_model(cfg: Config) -> None:
    """Build ``model.build_if_missing`` at ``model.path`` when the folder has no config.json."""
    if (cfg.model.path / "config.json").is_file() or cfg.model.build_if_missing == "no":
        return
    if cfg.model.build_if_missing == "smollm2":
        from services.demo.real_model import build_smollm2

        log.info("no model at %s: building SmolLM2-135M-Instruct", cfg.model.path)
        build_smollm2(cfg.model.path)
        return
    from services.demo.tiny_model import build_tiny_model

    log.info("no model at %s: building the tiny model (seed %d)", cfg.model.path, cfg.run.seed)
    build_tiny_model(cfg.model.path, cfg.model.tiny, cfg.run.seed, task_kind=cfg.learner.task_kind)


def ensure_task(cfg: Config) -> None:
    """Write the synthetic task next to ``learner.train_file`` if asked to and missing; refuse
    a synthetic task of another kind already there (its rows name their kind)."""
    train = cfg.learner.train_file
    if train is None or not cfg.learner.make_task_if_missing:
        return
    from services.demo.tiny_task import PROBLEMS, make_task

    if train.exists():
        found = _first_data_source(train)
        if found in PROBLEMS and found != cfg.learner.task_kind:
            raise ValueError(
                f"{train} holds the synthetic {found!r} task but learner.task_kind is "
                f"{cfg.learner.task_kind!r}: point learner.train_file/eval_file at another "
                f"folder or set learner.task_kind = {found!r}"
            )
        return
    log.info("no data at %s: writing the synthetic %r task", train, cfg.learner.task_kind)
    make_task(train.parent, seed=cfg.run.seed, kind=cfg.learner.task_kind)


def _first_data_source(path: Path) -> str | None:
    """The ``data_source`` of a jsonl file's first row (None if it has none)."""
    with path.open() as fh:
        line = fh.readline()
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row.get("data_source") if isinstance(row, dict) else None


def prepare_inputs(cfg: Config) -> None:
    """What ``luffy init`` does: the model, then the task, each only when missing."""
    ensure_model(cfg)
    ensure_task(cfg)


__all__ = ["ensure_model", "ensure_task", "prepare_inputs"]
