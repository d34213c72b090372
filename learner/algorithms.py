"""LUFFY's objective as pure tensor functions (from LUFFY's released code; DESIGN.md).

Shapes: ``S`` samples (sequences) in a batch, ``T`` response tokens over all samples (flat),
``V`` vocabulary. Samples belong to groups (one prompt each) through ``group_ids``.

- ``group_advantages``: GRPO advantages, mean-centred over the whole group (LUFFY, incl. the
  off-policy trace) or over its on-policy samples only (``grpo_split``); optional std division.
- ``on_policy_loss``: -A * r, r = exp(logp - logp_old) (no clip by default; PPO clip option).
- ``off_policy_loss``: -A * f(p), p = exp(logp), f(p) = p / (p + gamma) (policy shaping),
  behaviour probability taken as 1; or -A * p without shaping. Never clipped.
- ``truncated_is_weight``: min(pi_prox / pi_behav, C) for the decoupled (stale) objective.
- ``sft_nll``, ``entropy_from_logits``, ``loss_denominator`` and ``aggregate``.

How a mode combines them is ``learner.objective`` (``token_losses``).
"""

from __future__ import annotations

import torch


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    baseline_mask: torch.Tensor,
    std_normalize: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Per-sample advantages ``r_i - mean(r_j : j in group, baseline_mask_j)``.

    rewards [S] float, group_ids [S] long (0..G-1), baseline_mask [S] bool (which samples form
    the baseline: all for LUFFY's ``grpo``, on-policy only for ``grpo_split``) -> [S].
    With ``std_normalize`` the difference is divided by (unbiased std of the baseline set + eps);
    a baseline of fewer than two samples, or whose rewards all tie (std 0), uses std 1 as LUFFY
    does (else a trace beside tied on-policy rewards under ``grpo_split`` would get (r - mean) /
    eps = 1e6). A group with no baseline sample gets 0.
    """
    rewards = rewards.to(torch.float64)
    groups = int(group_ids.max().item()) + 1 if group_ids.numel() else 0
    weight = baseline_mask.to(torch.float64)
    count = torch.zeros(groups, dtype=torch.float64).index_add_(0, group_ids, weight)
    total = torch.zeros(groups, dtype=torch.float64).index_add_(0, group_ids, rewards * weight)
    mean = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    adv = rewards - mean[group_ids]
    if std_normalize:
        sq = torch.zeros(groups, dtype=torch.float64).index_add_(
            0, group_ids, (rewards - mean[group_ids]) ** 2 * weight
        )
        std = torch.where(count > 1, (sq / (count - 1).clamp(min=1)).sqrt(), torch.ones_like(sq))
        std = torch.where(std == 0, torch.ones_like(std), std)
        adv = adv / (std[group_ids] + eps)
    adv = torch.where(count[group_ids] > 0, adv, torch.zeros_like(adv))
    return adv.to(torch.float32)


def on_policy_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    adv: torch.Tensor,
    clip: bool = False,
    clip_eps: float = 0.2,
) -> torch.Tensor:
    """[T] token losses ``-A * r`` with r = exp(logp - logp_old); with ``clip`` the PPO
    pessimistic max(-A r, -A clip(r, 1-eps, 1+eps))."""
    ratio = torch.exp(logp - logp_old)
    loss = -adv * ratio
    if clip:
        loss = torch.maximum(loss, -adv * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps))
    return loss


def off_policy_loss(
    logp: torch.Tensor, adv: torch.Tensor, shaping: bool = True, gamma: float = 0.1
) -> torch.Tensor:
    """[T] token losses ``-A * f(p)`` with p = exp(logp); f(p) = p / (p + gamma) under policy
    shaping, else f(p) = p (the behaviour probability of a trace is taken as 1)."""
    p = torch.exp(logp)
    shaped = p / (p + gamma) if shaping else p
    return -adv * shaped


def truncated_is_weight(
    logp_prox: torch.Tensor, logp_behav: torch.Tensor, cap: float = 2.0
) -> torch.Tensor:
    """[T] importance weights min(exp(logp_prox - logp_behav), cap); no gradient flows."""
    return torch.exp(logp_prox - logp_behav).clamp(max=cap).detach()


def sft_nll(logp: torch.Tensor) -> torch.Tensor:
    """[T] negative log-likelihood per token."""
    return -logp


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """[T, V] logits -> [T] entropy of softmax (in float32)."""
    logits = logits.float()
    logz = torch.logsumexp(logits, dim=-1)
    p = torch.softmax(logits, dim=-1)
    return logz - (p * logits).sum(-1)


def loss_denominator(how: str, n_sequences: int, n_tokens: int, max_response_len: int) -> float:
    """The constant a batch's summed token loss is divided by: Dr.GRPO-style
    ``n_sequences * max_response_len`` (``token_sum_norm``) or the token count (``token_mean``)."""
    if how == "token_sum_norm":
        return float(max(1, n_sequences) * max_response_len)
    if how == "token_mean":
        return float(max(1, n_tokens))
    raise ValueError(f"unknown loss aggregation {how!r}")


def aggregate(values: torch.Tensor, mask: torch.Tensor, denominator: float) -> torch.Tensor:
    """Scalar ``sum(values * mask) / denominator``; [T] values and mask."""
    return (values * mask).sum() / denominator


__all__ = [
    "aggregate",
    "entropy_from_logits",
    "group_advantages",
    "loss_denominator",
    "off_policy_loss",
    "on_policy_loss",
    "sft_nll",
    "truncated_is_weight",
]
