"""Plots of ``metrics.jsonl``: reward (train, on-policy, held-out), entropy and response
length against the step. One run per file, or several runs side by side."""

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
    """One PNG with three panels; ``runs`` maps a label to a metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
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
    for ax, name in zip(
        axes, ("reward", "entropy (nats)", "response length (tokens)"), strict=True
    ):
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylim(-0.02, 1.02)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


__all__ = ["plot_runs", "read_metrics"]
