"""Batch assembly: scored samples -> complete groups -> a training batch.

- ``GroupAssembler`` owns the groups being collected (by task id) and the accounting of what
  left it and why. A group completes when its on-policy samples and off-policy traces have
  all been scored; a group still incomplete after ``group_timeout_s`` is dropped and counted
  (reason ``incomplete``), never silently. A re-delivered sample (same rollout id) is ignored.
- ``build_batch`` turns complete groups into ``Sample``s with GRPO advantages; groups whose
  on-policy samples are older than ``max_off_policy_steps`` are dropped (``stale = drop``) or
  kept for the decoupled correction (``stale = correct``) up to the hard bound
  ``max_corrected_lag``, beyond which they are dropped too; either way they are counted. A
  rollout's age is judged by its oldest token's version (``policy_version``); how many versions
  its tokens span (``version_max - policy_version``) is reported as ``version_span_max``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from common.config import AlgorithmConfig
from common.schemas import ScoredRollout
from learner.algorithms import group_advantages


@dataclass
class Group:
    task_id: str
    n_on: int
    n_off: int
    samples: dict[str, ScoredRollout] = field(default_factory=dict)  # rollout id -> sample
    first_seen: float = field(default_factory=time.monotonic)

    def complete(self) -> bool:
        """Every sample is in: ``n_on`` on-policy ones and ``n_off`` trace samples (whole
        traces, or prefixes the policy continued; a prefix of ratio 0 is an on-policy sample,
        so the count is over all of them)."""
        return len(self.samples) >= self.n_on + self.n_off

    def min_version(self) -> int | None:
        """The oldest version any of its generated tokens was sampled with (None: no sample
        holds a generated token, e.g. whole traces only)."""
        versions = [s.rollout.policy_version for s in self.samples.values() if s.rollout.generated]
        return min(versions) if versions else None


class GroupAssembler:
    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.pending: dict[str, Group] = {}
        self.ready: list[Group] = []
        self.dropped: Counter[str] = Counter()
        self.duplicates = 0

    def add(self, scored: ScoredRollout, expected: tuple[int, int]) -> None:
        rollout = scored.rollout
        group = self.pending.get(rollout.task_id)
        if group is None:
            if any(g.task_id == rollout.task_id for g in self.ready):
                self.duplicates += 1  # a late copy of a sample of a group already complete
                return
            group = self.pending[rollout.task_id] = Group(rollout.task_id, *expected)
        if rollout.rollout_id in group.samples:
            self.duplicates += 1
            return
        group.samples[rollout.rollout_id] = scored
        if group.complete():
            self.ready.append(self.pending.pop(rollout.task_id))

    def take(self, count: int) -> list[Group]:
        """Up to ``count`` complete groups, oldest first."""
        taken, self.ready = self.ready[:count], self.ready[count:]
        return taken

    def expire(self) -> list[Group]:
        """Incomplete groups waiting longer than the timeout, removed and counted."""
        limit = time.monotonic() - self.timeout_s
        old = [g for g in self.pending.values() if g.first_seen < limit]
        for group in old:
            del self.pending[group.task_id]
            self.dropped["incomplete"] += 1
        return old


@dataclass
class Sample:
    """One sequence to train on: prompt + response tokens and per-response-token data."""

    input_ids: list[int]
    prompt_len: int
    behav_logprobs: list[float]
    advantage: float
    off_policy: bool  # it carries off-policy tokens (a trace, or a trace prefix)
    reward: float
    lag: int  # learner version - the oldest version a token was sampled with (policy_version)
    version_span: int = 0  # newest - oldest version among its tokens (0 within one version)
    prefix_len: int | None = None  # leading off-policy response tokens (default: all if off)

    def __post_init__(self) -> None:
        if self.prefix_len is None:
            self.prefix_len = self.response_len if self.off_policy else 0

    @property
    def response_len(self) -> int:
        return len(self.input_ids) - self.prompt_len


@dataclass
class TrainBatch:
    samples: list[Sample]
    groups: int
    stats: dict[str, float] = field(default_factory=dict)


def _stale(group: Group, version: int, max_lag: int) -> bool:
    oldest = group.min_version()
    return oldest is not None and version - oldest > max_lag


def _too_stale(group: Group, version: int, algo: AlgorithmConfig) -> bool:
    """Dropped: older than accepted and either not to be corrected or past the hard bound."""
    if not _stale(group, version, algo.max_off_policy_steps):
        return False
    return algo.stale == "drop" or _stale(group, version, algo.max_corrected_lag)


def build_batch(
    groups: list[Group], version: int, algo: AlgorithmConfig
) -> tuple[TrainBatch, list[Group]]:
    """Samples with advantages from complete ``groups``; returns (batch, dropped stale groups)."""
    kept, dropped = [], []
    for group in groups:
        if _too_stale(group, version, algo):
            dropped.append(group)
        else:
            kept.append(group)
    rows: list[tuple[int, ScoredRollout]] = []
    for gid, group in enumerate(kept):
        rows += [(gid, s) for _, s in sorted(group.samples.items())]
    if not rows:
        return TrainBatch([], 0, {"stale_dropped": float(len(dropped))}), dropped
    rewards = torch.tensor([s.reward for _, s in rows], dtype=torch.float32)
    cut = torch.tensor([_truncated(s) for _, s in rows])
    scored_rewards = rewards.clone()
    if algo.truncated == "wrong":  # never stopping is a failure, whatever came before the cap
        rewards = torch.where(cut, torch.zeros_like(rewards), rewards)
    group_ids = torch.tensor([gid for gid, _ in rows], dtype=torch.long)
    off = torch.tensor([s.rollout.off_policy for _, s in rows])
    baseline = ~off if algo.advantage == "grpo_split" else torch.ones_like(off)
    adv = group_advantages(rewards, group_ids, baseline, algo.std_normalize, algo.eps)
    if algo.truncated == "zero_advantage":  # LUFFY's disable_truncation_advantage
        adv = torch.where(cut, torch.zeros_like(adv), adv)
    samples = [_sample(s, float(a), version) for (_, s), a in zip(rows, adv.tolist(), strict=True)]
    stale_kept = sum(_stale(g, version, algo.max_off_policy_steps) for g in kept)
    stats = {
        "reward_mean": float(rewards.mean()),
        "reward_on_mean": float(rewards[~off].mean()) if (~off).any() else 0.0,
        "reward_off_mean": float(rewards[off].mean()) if off.any() else 0.0,
        "stale_dropped": float(len(dropped)),
        "stale_corrected": float(stale_kept),
        "lag_max": float(max(s.lag for s in samples)),
        "version_span_max": float(max(s.version_span for s in samples)),
        "response_len_on_mean": _mean([s.response_len for s in samples if not s.off_policy]),
        # LUFFY's partial prefixes: samples that continued a trace prefix, and the share of
        # the batch's response tokens that are off-policy
        "prefix_continued": float(sum(0 < s.prefix_len < s.response_len for s in samples)),
        # responses cut by max_new_tokens: their share, reward, and how many pushed up
        **_truncation_stats(cut, scored_rewards, adv, off),
        "off_token_share": sum(s.prefix_len for s in samples)
        / max(1, sum(s.response_len for s in samples)),
    }
    return TrainBatch(samples, len(kept), stats), dropped


def _truncated(scored: ScoredRollout) -> bool:
    return scored.rollout.generated and scored.rollout.finish_reason == "length"


def _truncation_stats(
    cut: torch.Tensor, rewards: torch.Tensor, adv: torch.Tensor, off: torch.Tensor
) -> dict[str, float]:
    """Over on-policy samples: the share cut by the length cap, their mean reward, and the
    share of all on-policy samples that are cut yet get a positive advantage."""
    on = ~off
    n_on = max(1, int(on.sum()))
    cut_on = cut & on
    return {
        "truncated_share": float(cut_on.sum()) / n_on,
        "truncated_reward_mean": float(rewards[cut_on].mean()) if cut_on.any() else 0.0,
        "truncated_pushed_share": float((cut_on & (adv > 0)).sum()) / n_on,
    }


def _mean(values: list[int]) -> float:
    return float(sum(values)) / len(values) if values else 0.0


def _sample(scored: ScoredRollout, adv: float, version: int) -> Sample:
    r = scored.rollout
    prompt = r.prompt_ids.tolist()
    generated = r.generated
    return Sample(
        input_ids=prompt + r.completion_ids.tolist(),
        prompt_len=len(prompt),
        behav_logprobs=r.logprobs.tolist(),
        advantage=adv,
        off_policy=r.off_policy,
        reward=scored.reward,
        lag=version - r.policy_version if generated else 0,
        version_span=r.version_max - r.policy_version if generated else 0,
        prefix_len=r.prefix_len,
    )


def trace_sample(prompt: list[int], trace: list[int]) -> Sample:
    """An off-policy trace trained as it is (SFT): reward 1, no behaviour log-probs."""
    return Sample(
        input_ids=prompt + trace,
        prompt_len=len(prompt),
        behav_logprobs=[0.0] * len(trace),
        advantage=0.0,
        off_policy=True,
        reward=1.0,
        lag=0,
    )


__all__ = ["Group", "GroupAssembler", "Sample", "TrainBatch", "build_batch", "trace_sample"]
