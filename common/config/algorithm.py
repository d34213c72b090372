"""``[algorithm]``: the objective (LUFFY, GRPO, SFT, RL + SFT), its groups, advantages, policy
shaping, clipping and staleness rules."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from common.config.base import _Section


class AlgorithmConfig(_Section):
    mode: Literal["luffy", "grpo", "sft", "rl_sft"] = "luffy"
    """Objective: LUFFY mixed-policy GRPO, on-policy GRPO, SFT on traces, or RL + SFT loss."""
    n_on: int = Field(default=7, ge=0)
    """On-policy samples per prompt."""
    n_off: int = Field(default=1, ge=0)
    """Trace samples per prompt (LUFFY's ``n_prefix``): each shows the off-policy trace whole
    or, with prefix ratios below 1, its leading part for the policy to continue."""
    advantage: Literal["grpo", "grpo_split"] = "grpo"
    """``grpo``: baseline = mean reward of the whole group; ``grpo_split``: of on-policy only."""
    std_normalize: bool = False
    """Divide advantages by the group reward std (+ ``eps``)."""
    eps: float = Field(default=1e-6, gt=0)
    """Epsilon of the std division."""
    clip: bool = False
    """PPO-clip the on-policy ratio pi / pi_behav at 1 +- ``clip_eps`` (LUFFY's on-policy
    baseline). Needs ``decoupled = false``: the decoupled ratio is against the learner's own
    pre-update policy, which is 1 in value in our one update per batch, so a clip there could
    never bind (the staleness is handled by the truncated importance weight instead); the
    combination is refused rather than silently ignored."""
    clip_eps: float = Field(default=0.2, gt=0)
    """PPO clip range (LUFFY's ``clip_ratio``: 0.2)."""
    shaping: bool = True
    """Policy shaping f(p) = p / (p + gamma) on off-policy tokens (else -A * p)."""
    gamma: float = Field(default=0.1, gt=0)
    """Policy-shaping gamma."""
    loss_agg: Literal["token_sum_norm", "token_mean", "luffy"] = "token_sum_norm"
    """How token losses make the step's loss. ``token_sum_norm``: the batch's token sum over
    (sequences x ``max_response_len``) (Dr.GRPO); ``token_mean``: over its token count; both
    with the entropy bonus as the batch's token mean. ``luffy``: LUFFY's released recipe, the
    same update as its 8-GPU run: every micro-batch's loss is its policy token sum /
    ``max_response_len`` plus the SFT term's and minus the entropy bonus's token means in that
    micro-batch, summed over micro-batches and ranks and divided by ``luffy_ranks`` (verl's
    ``loss_remove_token_mean`` with gradient accumulation, averaged by FSDP). Its policy
    gradient is (sequences / ``luffy_ranks``) times ``token_sum_norm``'s (64x at 512
    sequences), and the entropy bonus grows with the number of micro-batches."""
    luffy_ranks: int = Field(default=8, ge=1)
    """``loss_agg = luffy``: the data-parallel ranks of the reproduced run (LUFFY: 8 GPUs),
    whatever ``learner.nproc`` is; keep ``learner.micro_batch_tokens`` at LUFFY's
    ``ppo_max_token_len_per_gpu`` (32768) for the same micro-batches per rank."""
    max_response_len: int = Field(default=256, ge=1)
    """Constant divisor of ``token_sum_norm`` and ``luffy`` (LUFFY: the padded response length
    8192)."""
    entropy_coef: float = Field(default=0.001, ge=0)
    """Entropy bonus coefficient (LUFFY: 0.001)."""
    sft_coef: float = Field(default=1.0, ge=0)
    """Weight of the NLL loss on traces in ``rl_sft`` mode."""
    truncated: Literal["keep", "zero_advantage", "wrong"] = "keep"
    """An on-policy response cut by ``max_new_tokens`` (no EOS): ``keep`` the verifier's reward;
    ``zero_advantage`` (LUFFY's ``disable_truncation_advantage``): it teaches nothing;
    ``wrong``: its reward is 0 before the advantages, so a right answer followed by text that
    never stops is pushed down, not up (see bench/README.md, issue #18)."""
    max_off_policy_steps: int = Field(default=1, ge=0)
    """Largest accepted policy lag of a rollout; also bounds groups in flight (0 = synchronous)."""
    stale: Literal["drop", "correct"] = "correct"
    """Groups older than ``max_off_policy_steps``: drop, or keep with a truncated IS weight."""
    max_corrected_lag: int = Field(default=4, ge=0)
    """Hard bound of ``stale = correct``: a group whose oldest sample lags more versions than
    this is dropped and counted, however it would be weighted (the truncated importance weight
    corrects a few versions of drift, not a generator that served stale weights for long)."""
    decoupled: bool = True
    """Decoupled objective: on-policy ratio against the learner's own pre-update policy, each
    token weighted by the truncated importance weight min(pi_prox / pi_behav, ``is_cap``)."""
    is_cap: float = Field(default=2.0, gt=0)
    """Cap C of the truncated importance weight min(pi_prox / pi_behav, C)."""
    max_prefix_len: int = Field(default=8192, ge=1)
    """Longest off-policy trace in tokens (LUFFY's ``max_prefix_len``): a trace is cut to it,
    then EOS is appended and the result cut to it again, so a longer trace loses its EOS."""
    min_prefix_ratio: float = Field(default=1.0, ge=0, le=1)
    """Shortest share of the trace a trace sample shows (LUFFY's ``min_prefix_ratio``). 1 with
    ``max_prefix_ratio`` 1 (LUFFY's recipe): every trace sample is the whole trace. Below 1 the
    generator continues the prompt after the first int(len(trace) x ratio) trace tokens: those
    are trained off-policy, the continuation on-policy with its own behaviour log-probs, and
    the reward is the verifier's on prefix + continuation."""
    max_prefix_ratio: float = Field(default=1.0, ge=0, le=1)
    """Longest share of the trace a trace sample shows (LUFFY's ``max_prefix_ratio``)."""
    prefix_strategy: Literal["random", "linear", "reverse_linear", "linear_max", "fixed"] = "random"
    """How a trace sample's ratio is drawn (``learner.prefixes``): ``random`` in [min, max];
    ``reverse_linear`` / ``linear_max`` in [0, bound] with a bound growing / shrinking over
    ``prefix_steps`` in 10 windows up to / from ``prefix_linear_max_ratio``; ``fixed`` evenly
    spaced from min to max over the group's trace samples; ``linear`` (with
    ``prefix_share_across_samples``) ``prefix_linear_max_ratio`` x (1 - step / prefix_steps)."""
    prefix_steps: int = Field(default=300, ge=1)
    """Training steps the scheduled strategies run over (LUFFY's ``prefix_steps``)."""
    prefix_linear_max_ratio: float = Field(default=0.8, ge=0, le=1)
    """Largest ratio of the scheduled strategies (LUFFY's ``prefix_linear_max_ratio``)."""
    prefix_share_across_samples: bool = False
    """One ratio for all of a group's trace samples (LUFFY's ``prefix_share_across_samples``)."""
    target_prob: float = Field(default=1.0, ge=0, le=1)
    """Probability that a group includes its off-policy trace(s)."""

    @model_validator(mode="after")
    def _clip_acts(self) -> AlgorithmConfig:
        if self.clip and self.decoupled:
            raise ValueError(
                "algorithm.clip has no effect with algorithm.decoupled = true (the ratio "
                "against the pre-update policy is 1 in a single update per batch); set "
                "decoupled = false to clip pi / pi_behav as LUFFY's on-policy baseline does"
            )
        return self

    @model_validator(mode="after")
    def _prefixes_make_sense(self) -> AlgorithmConfig:
        if self.min_prefix_ratio > self.max_prefix_ratio:
            raise ValueError(
                f"min_prefix_ratio ({self.min_prefix_ratio}) must be <= max_prefix_ratio "
                f"({self.max_prefix_ratio})"
            )
        share, strategy = self.prefix_share_across_samples, self.prefix_strategy
        if strategy == "linear" and not share:
            raise ValueError("prefix_strategy = linear needs prefix_share_across_samples = true")
        if strategy == "fixed" and share:
            raise ValueError("prefix_strategy = fixed cannot share one ratio across samples")
        return self

    @model_validator(mode="after")
    def _lags_in_order(self) -> AlgorithmConfig:
        if self.max_corrected_lag < self.max_off_policy_steps:
            raise ValueError(
                f"max_corrected_lag ({self.max_corrected_lag}) must be >= max_off_policy_steps "
                f"({self.max_off_policy_steps})"
            )
        return self


__all__ = ["AlgorithmConfig"]
