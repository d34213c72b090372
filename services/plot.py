"""Plots of ``metrics.jsonl``: reward (train, on-policy, held-out), entropy, response length
and the update diagnostics (share of responses cut by the length cap, the learner's EOS
probability where responses stop) against the step. One run per file, or several runs side
by side."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows) of a metrics.jsonl (missing file: nothing)."""
    train, evals = [], []
    path = Path(path)
    if not path.exists():
        return train, evals
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        (evals if row.get("kind") == "eval" else train).append(row)
    return train, evals


def plot_runs(runs: Mapping[str, str | Path], out: str | Path, title: str = "") -> Path:
    """One PNG with four panels; ``runs`` maps a label to a metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    for label, path in runs.items():
        train, evals = read_metrics(path)
        steps = [r["step"] for r in train]
        axes[0].plot(
            steps,
            [r.get("reward_on_mean", 0) for r in train],
            alpha=0.35,
            label=f"{label}: on-policy reward (train)",
        )
        axes[0].plot(
            [r["step"] for r in evals],
            [r["reward_mean"] for r in evals],
            marker="o",
            label=f"{label}: held-out reward",
        )
        axes[1].plot(steps, [r.get("entropy", 0) for r in train], label=label)
        axes[2].plot(steps, [r.get("response_len_on_mean", 0) for r in train], label=label)
        axes[3].plot(
            steps, [r.get("truncated_share", 0) for r in train], label=f"{label}: cut at the cap"
        )
        axes[3].plot(
            steps,
            [r.get("eos_prob_mean", 0) for r in train],
            alpha=0.6,
            label=f"{label}: p(EOS) where it stopped",
        )
    names = ("reward", "entropy (nats)", "response length (tokens)", "share / probability")
    for ax, name in zip(axes, names, strict=True):
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylim(-0.02, 1.02)
    axes[3].set_ylim(-0.02, 1.02)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


__all__ = ["plot_runs", "read_metrics"]
