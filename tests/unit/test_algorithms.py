"""LUFFY's objective against values worked out by hand (the arithmetic is in the comments)."""

import math

import pytest
import torch

from common.config import AlgorithmConfig
from learner.algorithms import (
    aggregate,
    entropy_from_logits,
    group_advantages,
    loss_denominator,
    off_policy_loss,
    on_policy_loss,
    sft_nll,
    truncated_is_weight,
)
from learner.objective import make_objective, token_losses


def objective(**algorithm):
    return make_objective(AlgorithmConfig(**algorithm))


T = torch.tensor


def close(a, b, tol=1e-5):
    assert torch.allclose(
        torch.as_tensor(a, dtype=torch.float32), T(b, dtype=torch.float32), atol=tol
    ), (a, b)


def test_advantages_are_centred_on_the_whole_group():
    # group 0 rewards 1,0,0,1 -> mean 0.5 -> +-0.5; group 1 all 1 -> mean 1 -> 0
    rewards = T([1.0, 0, 0, 1, 1, 1, 1, 1])
    groups = T([0, 0, 0, 0, 1, 1, 1, 1])
    adv = group_advantages(rewards, groups, torch.ones(8, dtype=torch.bool))
    close(adv, [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])


def test_grpo_split_uses_on_policy_samples_as_baseline():
    # on-policy rewards 0,0,0 -> baseline 0; the trace (reward 1) gets +1
    rewards, groups = T([0.0, 0, 0, 1]), T([0, 0, 0, 0])
    on = T([True, True, True, False])
    close(group_advantages(rewards, groups, on), [0, 0, 0, 1])


def test_std_normalisation():
    # rewards 1,0,0,1: mean 0.5, unbiased var (4 * 0.25) / 3 = 1/3, std 0.57735
    # 0.5 / (0.57735 + 1e-6) = 0.866024
    adv = group_advantages(
        T([1.0, 0, 0, 1]), T([0, 0, 0, 0]), torch.ones(4, dtype=torch.bool), std_normalize=True
    )
    close(adv, [0.866024, -0.866024, -0.866024, 0.866024])
    # a lone sample: std taken as 1, advantage 0
    close(group_advantages(T([1.0]), T([0]), T([True]), std_normalize=True), [0.0])


def test_std_of_tied_rewards_is_taken_as_one_as_luffy_does():
    # grpo_split: on-policy rewards 0,0,0 tie -> std 0 -> 1 (LUFFY); the trace's advantage is
    # (1 - 0) / (1 + 1e-6) = 0.999999, not (1 - 0) / 1e-6 = 1e6
    rewards, groups = T([0.0, 0, 0, 1]), T([0, 0, 0, 0])
    on = T([True, True, True, False])
    adv = group_advantages(rewards, groups, on, std_normalize=True)
    close(adv, [0, 0, 0, 0.999999])
    # the whole group as baseline: 1,1,1,1 tie -> every advantage 0
    close(group_advantages(T([1.0] * 4), groups, torch.ones(4, dtype=torch.bool), True), [0] * 4)


def test_group_without_baseline_samples_gets_zero_advantage():
    close(group_advantages(T([1.0, 0.0]), T([0, 1]), T([False, True])), [0.0, 0.0])


def test_on_policy_loss_no_clip_and_ppo_clip():
    # p = 0.5, p_old = 0.25 -> r = 2
    logp, old = T([math.log(0.5)] * 2), T([math.log(0.25)] * 2)
    adv = T([1.0, -1.0])
    close(on_policy_loss(logp, old, adv), [-2.0, 2.0])
    # clip 0.2: A=+1: max(-2, -1.2) = -1.2; A=-1: max(2, 1.2) = 2
    close(on_policy_loss(logp, old, adv, clip=True, clip_eps=0.2), [-1.2, 2.0])


def test_policy_shaping_value_and_gradient():
    # p = 0.5, gamma 0.1: f = 0.5 / 0.6 = 0.833333; A = 2 -> -1.666667; without shaping -1.0
    logp = T([math.log(0.5)], requires_grad=True)
    loss = off_policy_loss(logp, T([2.0]), shaping=True, gamma=0.1)
    close(loss.detach(), [-1.666667])
    close(off_policy_loss(logp.detach(), T([2.0]), shaping=False), [-1.0])
    # d/dlogp of -A p/(p+g) = -A g p / (p+g)^2 = -2 * 0.1 * 0.5 / 0.36 = -0.277778
    loss.sum().backward()
    close(logp.grad, [-0.277778])


def test_truncated_importance_weight():
    # 0.6 / 0.2 = 3 -> capped at 2; 0.2 / 0.4 = 0.5
    w = truncated_is_weight(
        T([math.log(0.6), math.log(0.2)]), T([math.log(0.2), math.log(0.4)]), 2.0
    )
    close(w, [2.0, 0.5])


def test_nll_entropy_and_aggregation():
    close(sft_nll(T([math.log(0.25)])), [1.386294])
    # uniform over 4 -> log 4; one-hot-ish -> ~0
    close(entropy_from_logits(T([[0.0, 0, 0, 0], [100.0, 0, 0, 0]])), [1.386294, 0.0])
    assert loss_denominator("token_sum_norm", 3, 10, 256) == 768.0  # 3 seqs * 256
    assert loss_denominator("token_mean", 3, 10, 256) == 10.0
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        loss_denominator("seq_mean", 1, 1, 1)
    # (1 + 2 + 4 masked out) / 768
    close(aggregate(T([1.0, 2.0, 4.0]), T([1.0, 1.0, 0.0]), 768.0), [3 / 768])


def test_token_losses_per_mode():
    # two on-policy tokens (A = 1, behaviour p = 0.5 and 0.125), one trace token (A = 1, p = 0.5)
    logp = T([math.log(0.5), math.log(0.25), math.log(0.5)], requires_grad=True)
    behav = T([math.log(0.5), math.log(0.125), 0.0])
    adv = T([1.0, 1.0, 1.0])
    off = T([False, False, True])
    luffy = token_losses(objective(mode="luffy"), logp, behav, adv, off)
    # on: r = 1 (proximal = current), IS weight 0.5/0.5 = 1 and 0.25/0.125 = 2 -> -1, -2
    close(luffy["on"].detach(), [-1.0, -2.0, 0.0])
    close(luffy["off"].detach(), [0.0, 0.0, -0.5 / 0.6])
    close(luffy["sft"].detach(), [0.0, 0.0, 0.0])
    (luffy["on"] + luffy["off"]).sum().backward()
    # d/dlogp: on tokens -A * w = -1, -2; trace: -A g p/(p+g)^2 = -0.138889
    close(logp.grad, [-1.0, -2.0, -0.138889])

    grpo = token_losses(objective(mode="grpo", decoupled=False), logp, behav, adv, off)
    # r = p / p_behav: 1 and 2 -> -1, -2; trace tokens are not trained
    close(grpo["on"].detach(), [-1.0, -2.0, 0.0])
    close(grpo["off"].detach(), [0.0, 0.0, 0.0])

    sft = token_losses(objective(mode="sft"), logp, behav, adv, off)
    close(sft["sft"].detach(), [0.0, 0.0, math.log(2)])
    close(sft["on"].detach(), [0.0, 0.0, 0.0])

    rl_sft = token_losses(objective(mode="rl_sft", sft_coef=0.5), logp, behav, adv, off)
    close(rl_sft["sft"].detach(), [0.0, 0.0, 0.5 * math.log(2)])
    close(rl_sft["on"].detach(), [-1.0, -2.0, 0.0])
    close(rl_sft["off"].detach(), [0.0, 0.0, 0.0])


def test_each_mode_builds_its_own_terms_by_keyword():
    algo = AlgorithmConfig(
        gamma=0.3, clip_eps=0.15, clip=True, decoupled=False, sft_coef=0.25, is_cap=3.0
    )
    luffy = make_objective(algo)
    assert luffy.off_policy.gamma == 0.3 and luffy.on_policy.clip_eps == 0.15
    assert luffy.on_policy.is_cap == 3.0 and luffy.sft is None
    assert luffy.generates and luffy.uses_traces
    grpo = make_objective(algo.model_copy(update={"mode": "grpo"}))
    assert grpo.off_policy is None and grpo.generates and not grpo.uses_traces
    sft = make_objective(algo.model_copy(update={"mode": "sft"}))
    assert sft.sft.coef == 1.0 and not sft.generates and sft.uses_traces
    rl_sft = make_objective(algo.model_copy(update={"mode": "rl_sft"}))
    assert rl_sft.sft.coef == 0.25 and rl_sft.on_policy.clip and rl_sft.off_policy is None
    # the loss constant: 4 sequences x max_response_len 256 (Dr.GRPO), or the token count
    assert luffy.denominator(4, 100) == 1024.0
    token_mean = make_objective(algo.model_copy(update={"loss_agg": "token_mean"}))
    assert token_mean.denominator(4, 100) == 100.0
