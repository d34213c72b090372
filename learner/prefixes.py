"""LUFFY's partial prefixes: how much of the off-policy trace each trace sample shows.

``prefix_ratios`` draws the ratio of each of a group's ``n_off`` trace samples (LUFFY's
``n_prefix``) as LUFFY's rollout does for ``prefix_strategy``:

- ``random``: uniform in [min_prefix_ratio, max_prefix_ratio] per sample.
- ``reverse_linear`` / ``linear_max``: ``prefix_steps`` is cut into 10 windows; in window i
  (steps i*S/10 .. (i+1)*S/10) the ratio is uniform in [0, (i+1) * M / 10] (growing) or
  [0, (10 - i) * M / 10] (shrinking), M = ``prefix_linear_max_ratio``; after S steps the last
  window's bound stays (LUFFY's window index -1).
- ``fixed``: evenly spaced from min to max over the samples (min for a single sample).
- ``linear`` (needs ``prefix_share_across_samples``): M * (1 - min(step / S, 1)).

With ``prefix_share_across_samples`` one ratio serves every sample of the group: ``linear``'s,
or (any other strategy, as LUFFY's code does it) one uniform draw in [min, max]. A trace of
``n`` tokens (EOS included) shows ``int(n * ratio)`` of them (``prefix_tokens``): all of them is
the whole trace (no generation), none an ordinary on-policy sample, anything between a prefix
the policy continues.
"""

from __future__ import annotations

import random

from common.config import AlgorithmConfig

WINDOWS = 10


def _window(step: int, steps: int) -> int:
    """LUFFY's window index of ``step`` (the first window whose closed range holds it), or
    the last window once ``step`` is past ``steps``."""
    for i in range(WINDOWS):
        if i * steps / WINDOWS <= step <= (i + 1) * steps / WINDOWS:
            return i
    return WINDOWS - 1


def _draw(algo: AlgorithmConfig, step: int, rng: random.Random) -> float:
    strategy, top = algo.prefix_strategy, algo.prefix_linear_max_ratio
    if strategy == "random":
        return rng.uniform(algo.min_prefix_ratio, algo.max_prefix_ratio)
    if strategy == "linear":
        return top * (1.0 - min(step / algo.prefix_steps, 1.0))
    i = _window(step, algo.prefix_steps)
    if strategy == "reverse_linear":
        return rng.uniform(0.0, (i + 1) * top / WINDOWS)
    if strategy == "linear_max":
        return rng.uniform(0.0, (WINDOWS - i) * top / WINDOWS)
    raise ValueError(f"prefix strategy {strategy!r} draws no single ratio")


def prefix_ratios(algo: AlgorithmConfig, n: int, step: int, rng: random.Random) -> list[float]:
    """Ratios of a group's ``n`` trace samples at training step ``step`` (0-based)."""
    if n <= 0:
        return []
    if algo.prefix_strategy == "fixed":
        if n == 1:
            return [algo.min_prefix_ratio]
        span = (algo.max_prefix_ratio - algo.min_prefix_ratio) / (n - 1)
        return [algo.min_prefix_ratio + i * span for i in range(n)]
    if algo.prefix_share_across_samples:  # LUFFY: linear's schedule, else one uniform draw
        if algo.prefix_strategy == "linear":
            return [_draw(algo, step, rng)] * n
        return [rng.uniform(algo.min_prefix_ratio, algo.max_prefix_ratio)] * n
    return [_draw(algo, step, rng) for _ in range(n)]


def prefix_tokens(n_tokens: int, ratio: float) -> int:
    """How many leading trace tokens a sample of ``ratio`` shows: ``int(n_tokens * ratio)``."""
    return int(n_tokens * ratio)


__all__ = ["prefix_ratios", "prefix_tokens"]
