"""LUFFY's prefix ratio strategies against values worked out by hand from its rollout code."""

import random

import pytest
import torch

from common.config import AlgorithmConfig
from learner.objective import make_objective, token_losses
from learner.prefixes import prefix_ratios, prefix_tokens


def algo(**kw):
    return AlgorithmConfig(**kw)


class Fixed(random.Random):
    """A random source whose uniform(a, b) is b, so the window bounds are visible."""

    def uniform(self, a, b):
        return b


def test_random_draws_each_sample_in_min_max():
    ratios = prefix_ratios(
        algo(min_prefix_ratio=0.2, max_prefix_ratio=0.6), 50, 0, random.Random(1)
    )
    assert len(set(ratios)) == 50 and all(0.2 <= r <= 0.6 for r in ratios)
    assert prefix_ratios(algo(), 3, 0, random.Random(1)) == [1.0, 1.0, 1.0]  # LUFFY's recipe


@pytest.mark.parametrize(
    ("step", "reverse", "shrinking"),
    [
        # S = 300, M = 0.8: window i holds steps 30i..30(i+1); reverse_linear's bound is
        # (i + 1) * 0.08, linear_max's (10 - i) * 0.08; past S the last window's bound stays
        (0, 0.08, 0.8),
        (30, 0.08, 0.8),  # the boundary belongs to the first window that holds it
        (31, 0.16, 0.72),
        (150, 0.40, 0.48),
        (299, 0.8, 0.08),
        (1000, 0.8, 0.08),
    ],
)
def test_scheduled_windows(step, reverse, shrinking):
    got = prefix_ratios(algo(prefix_strategy="reverse_linear"), 1, step, Fixed())
    assert got == pytest.approx([reverse])
    got = prefix_ratios(algo(prefix_strategy="linear_max"), 1, step, Fixed())
    assert got == pytest.approx([shrinking])


def test_fixed_spaces_ratios_from_min_to_max():
    a = algo(prefix_strategy="fixed", min_prefix_ratio=0.2, max_prefix_ratio=0.8)
    assert prefix_ratios(a, 4, 0, random.Random(0)) == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert prefix_ratios(a, 1, 0, random.Random(0)) == [0.2]  # LUFFY would divide by zero


def test_linear_decays_a_shared_ratio_and_sharing_draws_once():
    a = algo(prefix_strategy="linear", prefix_share_across_samples=True, prefix_steps=100)
    # 0.8 * (1 - 25 / 100) = 0.6 for every sample; past the steps 0
    assert prefix_ratios(a, 3, 25, random.Random(0)) == pytest.approx([0.6] * 3)
    assert prefix_ratios(a, 2, 500, random.Random(0)) == [0.0, 0.0]
    shared = algo(prefix_share_across_samples=True, min_prefix_ratio=0.1, max_prefix_ratio=0.9)
    ratios = prefix_ratios(shared, 4, 0, random.Random(3))
    assert len(set(ratios)) == 1 and 0.1 <= ratios[0] <= 0.9


def test_prefix_length_is_int_of_trace_length_times_ratio():
    # a trace of 11 tokens (10 + EOS): 0.5 -> 5, 0.99 -> 10 (the EOS stays out), 1.0 -> 11
    assert [prefix_tokens(11, r) for r in (0.0, 0.5, 0.99, 1.0)] == [0, 5, 10, 11]


def test_inconsistent_prefix_settings_are_refused():
    with pytest.raises(ValueError, match=r"min_prefix_ratio \(0.9\) must be <= max_prefix_ratio"):
        algo(min_prefix_ratio=0.9, max_prefix_ratio=0.5)
    with pytest.raises(ValueError, match="linear needs prefix_share_across_samples"):
        algo(prefix_strategy="linear")
    with pytest.raises(ValueError, match="fixed cannot share"):
        algo(prefix_strategy="fixed", prefix_share_across_samples=True)


def test_prefix_tokens_are_off_policy_and_the_continuation_on_policy():
    # one sample: 2 prefix tokens then 2 generated ones; p = 0.5 everywhere, advantage 1
    logp = torch.log(torch.full((4,), 0.5)).requires_grad_(True)
    behav = torch.tensor([0.0, 0.0, -0.6931, -0.6931])
    adv = torch.ones(4)
    off = torch.tensor([True, True, False, False])
    seq = torch.ones(4, dtype=torch.bool)
    parts = token_losses(make_objective(algo(decoupled=False)), logp, behav, adv, off, seq)
    # prefix: -A p / (p + 0.1) = -0.5 / 0.6 = -0.8333; continuation: -A exp(logp - behav) = -1
    torch.testing.assert_close(
        parts["off"].detach(), torch.tensor([-0.8333, -0.8333, 0, 0]), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        parts["on"].detach(), torch.tensor([0, 0, -1.0, -1.0]), atol=1e-4, rtol=0
    )
    # RL + SFT (LUFFY's multitask loss): the sequence has a prefix, so NLL on all four tokens
    # (-log 0.5 = 0.6931) and no policy term on it
    rl_sft = make_objective(algo(mode="rl_sft", decoupled=False))
    parts = token_losses(rl_sft, logp, behav, adv, off, seq)
    torch.testing.assert_close(parts["sft"].detach(), torch.full((4,), 0.6931), atol=1e-4, rtol=0)
    assert not parts["on"].any()
