"""Update diagnostics and LUFFY's truncation rule against values worked out by hand."""

import math

import pytest
import torch

from common.config import AlgorithmConfig
from common.schemas import Rollout, ScoredRollout
from learner.batch import GroupAssembler, build_batch
from learner.diagnostics import summarize, token_sums


def test_mismatch_weights_and_eos_by_hand():
    # tokens: two generated of a fresh sample (learner log-prob ln 0.5, generator ln 0.3 and
    # ln 0.5), one generated of a lag-1 sample (learner ln 0.8 vs ln 0.1: weight 8 > cap 2),
    # one trace token (ignored); targets: EOS (id 9) ends the fresh sample
    logp = torch.log(torch.tensor([0.5, 0.5, 0.8, 0.9]))
    behav = torch.log(torch.tensor([0.3, 0.5, 0.1, 1.0]))
    off = torch.tensor([False, False, False, True])
    fresh = torch.tensor([True, True, False, False])
    targets = torch.tensor([3, 9, 4, 9])
    d = summarize(token_sums(logp, behav, off, fresh, targets, 9, 2.0), 1.5, 1.0)
    # k1 over fresh: mean(behav - logp) = (ln 0.6 + 0) / 2; k3: r = 5/3 -> 2/3 - ln 5/3, r = 1 -> 0
    k3 = 2 / 3 - math.log(5 / 3)
    assert d["mismatch_k1"] == pytest.approx(math.log(0.6) / 2)
    assert d["mismatch_k3"] == pytest.approx(k3 / 2)
    # every generated token: + r = 8 -> 8 - 1 - ln 8
    assert d["behav_k3"] == pytest.approx((k3 + 7 - math.log(8)) / 3)
    # weights min(r, 2): 5/3, 1, 2 -> mean 14/9; one of three (r = 8) above the cap
    assert d["is_weight_mean"] == pytest.approx(14 / 9)
    assert d["is_capped_share"] == pytest.approx(1 / 3)
    assert d["eos_prob_mean"] == pytest.approx(0.5)  # the trace's EOS is not counted
    assert d["grad_clipped"] == 1.0
    # no lag-0 sample: no mismatch reading at all (not a misleading 0)
    d = summarize(token_sums(logp, behav, off, ~off & False, targets, 9, 2.0), 0.5, 1.0)
    assert "mismatch_k3" not in d and d["grad_clipped"] == 0.0


def scored(sample, reward, finish="stop", off=False):
    rollout = Rollout(
        f"t/{sample}", "t", sample, [1, 2], [5, 6, 7], [0.0 if off else -1.0] * 3, "x", "1", 0,
        finish_reason=finish, off_policy=off,
    )  # fmt: skip
    return ScoredRollout(rollout, reward, "ok" if reward else "wrong")


def group(*samples):
    asm = GroupAssembler(60)
    for s in samples:
        asm.add(s, (3, 1))
    return asm.take(1)


@pytest.mark.parametrize("rule", ["keep", "zero_advantage", "wrong"])
def test_a_truncated_right_answer_is_not_pushed_under_luffys_rule(rule):
    # on-policy: right and stopped, right but cut by the cap, wrong; the trace right.
    # grpo_split baseline = mean of on-policy rewards 2/3
    groups = group(
        scored(0, 1.0), scored(1, 1.0, "length"), scored(2, 0.0), scored(3, 1.0, off=True)
    )
    algo = AlgorithmConfig(advantage="grpo_split", truncated=rule)
    batch, _ = build_batch(groups, 0, algo)
    adv = [s.advantage for s in batch.samples]  # ordered by rollout id: t/0, t/1, t/2, t/3
    expected = {
        "keep": [1 / 3, 1 / 3, -2 / 3, 1 / 3],
        "zero_advantage": [1 / 3, 0.0, -2 / 3, 1 / 3],  # LUFFY's disable_truncation_advantage
        # the cut answer counts as wrong: on-policy rewards 1, 0, 0 -> baseline 1/3
        "wrong": [2 / 3, -1 / 3, -1 / 3, 2 / 3],
    }[rule]
    assert adv == pytest.approx(expected)
    assert batch.stats["truncated_share"] == pytest.approx(1 / 3)
    assert batch.stats["truncated_reward_mean"] == 1.0
    assert batch.stats["truncated_pushed_share"] == pytest.approx(1 / 3 if rule == "keep" else 0)
    assert batch.stats["reward_on_mean"] == pytest.approx(1 / 3 if rule == "wrong" else 2 / 3)
