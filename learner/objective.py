"""The training objective as one typed value, built once from ``[algorithm]``.

``make_objective`` is the only place that reads ``algorithm.mode``: it turns the mode into the
loss terms that mode trains, each carrying only its own settings, built by keyword:

| mode     | on-policy term (GRPO) | off-policy term (LUFFY shaping) | SFT term (NLL on traces) |
|----------|-----------------------|---------------------------------|--------------------------|
| luffy    | yes                   | yes                             | no                       |
| grpo     | yes                   | no                              | no                       |
| sft      | no                    | no                              | coef 1                   |
| rl_sft   | yes                   | no                              | ``sft_coef``             |

Everything else asks the value, not the mode: the feeder (``uses_traces``: do tasks carry
their traces), the learner loop (``generates``: is there anything to sample), and the loss
(``token_losses``, ``denominator``, ``entropy_coef``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.config import AlgorithmConfig
from learner.algorithms import (
    loss_denominator,
    off_policy_loss,
    on_policy_loss,
    sft_nll,
    truncated_is_weight,
)


@dataclass(frozen=True, kw_only=True)
class OnPolicyTerm:
    """-A * r on generated tokens, r = pi / pi_old (optionally PPO-clipped). ``decoupled``: the
    ratio is against the learner's pre-update policy and each token is weighted by
    min(pi_prox / pi_behav, ``is_cap``); else against the behaviour policy."""

    clip: bool
    clip_eps: float
    decoupled: bool
    is_cap: float


@dataclass(frozen=True, kw_only=True)
class OffPolicyTerm:
    """-A * f(p) on trace tokens, f(p) = p / (p + ``gamma``) under ``shaping``, else p."""

    shaping: bool
    gamma: float


@dataclass(frozen=True, kw_only=True)
class SftTerm:
    """``coef`` * NLL on trace tokens."""

    coef: float


@dataclass(frozen=True, kw_only=True)
class Objective:
    mode: str  # the mode's name, for status and logs only: decisions ask the terms
    on_policy: OnPolicyTerm | None
    off_policy: OffPolicyTerm | None
    sft: SftTerm | None
    aggregation: str  # token_sum_norm | token_mean | luffy
    max_response_len: int
    entropy_coef: float
    luffy_ranks: int = 8

    @property
    def generates(self) -> bool:
        """Whether the objective trains on sampled responses (else only on the traces)."""
        return self.on_policy is not None

    @property
    def uses_traces(self) -> bool:
        """Whether tasks carry their off-policy traces into the groups."""
        return self.off_policy is not None or self.sft is not None

    def denominator(self, n_sequences: int, n_tokens: int) -> float:
        """The constant a batch's summed policy token loss is divided by."""
        if self.aggregation == "luffy":
            return float(self.luffy_ranks * self.max_response_len)
        return loss_denominator(self.aggregation, n_sequences, n_tokens, self.max_response_len)


def make_objective(algo: AlgorithmConfig) -> Objective:
    """The objective of ``algo.mode`` with the section's settings (see the table above)."""
    on = OnPolicyTerm(
        clip=algo.clip, clip_eps=algo.clip_eps, decoupled=algo.decoupled, is_cap=algo.is_cap
    )
    terms = {
        "luffy": {
            "on_policy": on,
            "off_policy": OffPolicyTerm(shaping=algo.shaping, gamma=algo.gamma),
        },
        "grpo": {"on_policy": on},
        "sft": {"sft": SftTerm(coef=1.0)},
        "rl_sft": {"on_policy": on, "sft": SftTerm(coef=algo.sft_coef)},
    }[algo.mode]
    return Objective(
        mode=algo.mode,
        on_policy=terms.get("on_policy"),
        off_policy=terms.get("off_policy"),
        sft=terms.get("sft"),
        aggregation=algo.loss_agg,
        max_response_len=algo.max_response_len,
        entropy_coef=algo.entropy_coef,
        luffy_ranks=algo.luffy_ranks,
    )


def token_losses(
    objective: Objective,
    logp: torch.Tensor,
    logp_behav: torch.Tensor,
    adv: torch.Tensor,
    off_policy: torch.Tensor,
    off_sequence: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-token loss parts of one batch. All inputs [T]: current log-probs (with grad),
    behaviour log-probs from the generator (0 for trace tokens), per-token advantages (the
    sample's advantage broadcast), off-policy flags (the token is in its sample's trace
    prefix) and ``off_sequence`` (its sample has such a prefix; default ``off_policy``).
    Returns {"on", "off", "sft"} [T], zero where a term is absent or does not apply to the
    token; their sum is the token loss.

    With the LUFFY term, prefix tokens are shaped off-policy and a continuation's tokens are
    on-policy. With the SFT term (LUFFY's multitask loss) the masks are per sequence, as
    LUFFY's ``prefix_mask.any(-1)``: sequences with a prefix get the NLL on every token and
    the policy term only sees the others.

    The proximal policy is the current one before this update (``logp.detach()``): with a
    decoupled on-policy term the ratio is exp(logp - logp_prox) and each on-policy token is
    weighted by min(pi_prox / pi_behav, C), which corrects stale samples (~1 for fresh ones).
    """
    off_sequence = off_policy if off_sequence is None else off_sequence
    on = ~off_sequence if objective.sft is not None else ~off_policy
    zero = torch.zeros_like(logp)
    parts = {"on": zero, "off": zero, "sft": zero}
    if (term := objective.on_policy) is not None:
        prox = logp.detach()
        old = prox if term.decoupled else logp_behav
        on_loss = on_policy_loss(logp, old, adv, term.clip, term.clip_eps)
        if term.decoupled:
            on_loss = on_loss * truncated_is_weight(prox, logp_behav, term.is_cap)
        parts["on"] = torch.where(on, on_loss, zero)
    if (shaped := objective.off_policy) is not None:
        off_loss = off_policy_loss(logp, adv, shaped.shaping, shaped.gamma)
        parts["off"] = torch.where(off_policy, off_loss, zero)
    if objective.sft is not None:
        parts["sft"] = torch.where(off_sequence, objective.sft.coef * sft_nll(logp), zero)
    return parts


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def micro_batch_loss(
    objective: Objective,
    parts: dict[str, torch.Tensor],
    entropy: torch.Tensor,
    off_sequence: torch.Tensor,
    batch_denominator: float,
    batch_tokens: int,
) -> torch.Tensor:
    """One micro-batch's share of the step's loss: summed over every micro-batch of every
    rank it is the loss of the step. ``parts`` from ``token_losses``, ``entropy`` and
    ``off_sequence`` [T_micro] (tokens of samples with a trace prefix);
    ``batch_denominator`` = ``denominator`` of the whole batch, ``batch_tokens`` its response
    tokens.

    Ours: sum(on + off + sft) / batch_denominator - coef * sum(H) / batch_tokens.
    ``luffy`` (verl's per-micro-batch loss, accumulated, FSDP-averaged over R ranks):
    [sum(on + off) / max_response_len + mean_off(sft) - coef * mean(H)] / R.
    """
    policy = parts["on"].sum() + parts["off"].sum()
    if objective.aggregation != "luffy":
        total = policy + parts["sft"].sum()
        return total / batch_denominator - objective.entropy_coef * entropy.sum() / batch_tokens
    ones = torch.ones_like(entropy)
    loss = (
        policy / objective.max_response_len
        + _masked_mean(parts["sft"], off_sequence)
        - objective.entropy_coef * _masked_mean(entropy, ones)
    )
    return loss / objective.luffy_ranks


__all__ = [
    "Objective",
    "OffPolicyTerm",
    "OnPolicyTerm",
    "SftTerm",
    "make_objective",
    "micro_batch_loss",
    "token_losses",
]
