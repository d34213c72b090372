"""Per-step diagnostics of the policy update (pure tensor functions, no gradient).

``token_sums`` reduces one micro-batch to sums that add up over micro-batches and ranks;
``summarize`` turns the step's sums into the reported values:

- ``mismatch_k1`` / ``mismatch_k3``: how far the learner's log-probs of generated tokens are
  from the generator's behaviour log-probs *at the same policy version* (samples of lag 0):
  k1 = mean(logp_behav - logp), k3 = mean(r - 1 - log r) with r = pi / pi_behav (>= 0, the
  low-variance KL estimate). A train/inference mismatch (a sync, dtype or sampling bug) shows
  here before it shows in the reward. Absent from a step without lag-0 samples (an
  asynchronous run trains samples of the previous version).
- ``behav_k3``: the same k3 over every generated token: the mismatch plus the policy's drift
  over the samples' lag (one step at ``max_off_policy_steps = 1``).
- ``is_weight_mean`` / ``is_capped_share``: the truncated importance weights min(pi_prox /
  pi_behav, C) of on-policy tokens, and the share that hit the cap.
- ``eos_prob_mean``: the learner's probability of EOS where a generated response stopped
  (absent when none did).
"""

from __future__ import annotations

import torch

FIELDS = ("k1", "k3", "fresh", "k3_all", "is_sum", "is_capped", "on", "eos_p", "eos")


def token_sums(
    logp: torch.Tensor,
    behav: torch.Tensor,
    off: torch.Tensor,
    fresh: torch.Tensor,
    targets: torch.Tensor,
    eos_id: int,
    is_cap: float,
) -> torch.Tensor:
    """[len(FIELDS)] float64 sums of one micro-batch; inputs [T] (``fresh``: on-policy tokens
    of samples with lag 0, ``off``: off-policy tokens)."""
    with torch.no_grad():
        logp, behav = logp.detach().double(), behav.double()
        on = ~off
        log_ratio = logp - behav
        k3 = torch.exp(log_ratio) - 1.0 - log_ratio
        weight = torch.exp(log_ratio)
        stop = on & (targets == eos_id)
        return torch.stack(
            [
                (-log_ratio * fresh).sum(),
                (k3 * fresh).sum(),
                fresh.sum().double(),
                (k3 * on).sum(),
                (weight.clamp(max=is_cap) * on).sum(),
                ((weight > is_cap) & on).sum().double(),
                on.sum().double(),
                (torch.exp(logp) * stop).sum(),
                stop.sum().double(),
            ]
        ).cpu()


def summarize(sums: torch.Tensor, grad_norm: float, grad_clip: float) -> dict[str, float]:
    """The step's diagnostics from the sums over every micro-batch and rank."""
    v = dict(zip(FIELDS, sums.tolist(), strict=True))
    fresh = {}
    if v["fresh"]:
        fresh = {"mismatch_k1": v["k1"] / v["fresh"], "mismatch_k3": v["k3"] / v["fresh"]}
    return {
        **fresh,
        "behav_k3": v["k3_all"] / max(1.0, v["on"]),
        "is_weight_mean": v["is_sum"] / max(1.0, v["on"]),
        "is_capped_share": v["is_capped"] / max(1.0, v["on"]),
        **({"eos_prob_mean": v["eos_p"] / v["eos"]} if v["eos"] else {}),
        "grad_clipped": float(grad_norm > grad_clip),
    }


__all__ = ["FIELDS", "summarize", "token_sums"]
