import pytest

from common.config import AlgorithmConfig
from common.schemas import Rollout, ScoredRollout
from learner.batch import GroupAssembler, build_batch


def scored(task, sample, reward, version=0, off=False, n_tokens=3):
    rollout = Rollout(
        f"{task}/{'off' if off else ''}{sample}",
        task,
        sample,
        [1, 2],
        list(range(10, 10 + n_tokens)),
        [0.0 if off else -1.0] * n_tokens,
        "t",
        "1",
        version,
        off_policy=off,
    )
    return ScoredRollout(rollout, reward, "ok" if reward else "wrong")


def test_groups_complete_when_all_samples_are_scored_and_duplicates_are_ignored():
    asm = GroupAssembler(timeout_s=60)
    for i in range(3):
        asm.add(scored("a", i, 0.0), (3, 1))
    assert not asm.ready
    asm.add(scored("a", 0, 0.0), (3, 1))  # re-delivered
    asm.add(scored("a", 0, 1.0, off=True), (3, 1))
    assert [g.task_id for g in asm.ready] == ["a"] and asm.duplicates == 1
    asm.add(scored("a", 1, 0.0), (3, 1))  # late copy after completion
    assert asm.duplicates == 2 and not asm.pending
    assert [g.task_id for g in asm.take(5)] == ["a"] and not asm.ready


def test_incomplete_groups_expire_and_are_counted():
    asm = GroupAssembler(timeout_s=0.0)
    asm.add(scored("b", 0, 1.0), (2, 0))
    assert [g.task_id for g in asm.expire()] == ["b"]
    assert asm.dropped["incomplete"] == 1 and not asm.pending


def groups_of(*specs):
    asm = GroupAssembler(60)
    for task, rewards, version, trace in specs:
        for i, r in enumerate(rewards):
            asm.add(scored(task, i, r, version), (len(rewards), 1 if trace else 0))
        if trace:
            asm.add(scored(task, 0, 1.0, off=True), (len(rewards), 1))
    return asm.take(10)


def test_batch_advantages_include_the_trace_in_the_baseline():
    # rewards 0,0,0 + trace 1: mean 0.25 -> on-policy -0.25, trace +0.75
    batch, dropped = build_batch(groups_of(("g", [0, 0, 0], 3, True)), 3, AlgorithmConfig())
    assert not dropped and batch.groups == 1
    adv = sorted((s.off_policy, round(s.advantage, 6)) for s in batch.samples)
    assert adv == [(False, -0.25)] * 3 + [(True, 0.75)]
    assert batch.stats["reward_mean"] == 0.25 and batch.stats["reward_off_mean"] == 1.0
    trace = next(s for s in batch.samples if s.off_policy)
    assert trace.input_ids == [1, 2, 10, 11, 12] and trace.prompt_len == 2 and trace.lag == 0


def test_grpo_split_baseline_is_on_policy_only():
    algo = AlgorithmConfig(advantage="grpo_split")
    batch, _ = build_batch(groups_of(("g", [0, 1, 1], 0, True)), 0, algo)
    # on-policy mean 2/3: -0.666667, +0.333333 x2; trace 1 - 2/3 = 0.333333
    assert sorted(round(s.advantage, 6) for s in batch.samples) == [
        -0.666667,
        0.333333,
        0.333333,
        0.333333,
    ]


@pytest.mark.parametrize(("stale", "kept", "dropped_n"), [("drop", 1, 1), ("correct", 2, 0)])
def test_stale_groups_are_dropped_or_kept_for_correction(stale, kept, dropped_n):
    algo = AlgorithmConfig(max_off_policy_steps=1, stale=stale)
    groups = groups_of(("fresh", [1, 0], 5, False), ("old", [1, 0], 3, False))
    batch, dropped = build_batch(groups, 5, algo)
    assert batch.groups == kept and len(dropped) == dropped_n
    assert batch.stats["stale_dropped"] == dropped_n
    if stale == "correct":
        assert batch.stats["stale_corrected"] == 1 and batch.stats["lag_max"] == 2


def test_a_continued_prefix_is_off_policy_up_to_its_prefix_and_ages_like_a_sample():
    # group: on-policy rewards 0, 1 (version 2) and a prefix sample (4 trace tokens + 6
    # generated at version 1, reward 1); learner at version 3
    asm = GroupAssembler(60)
    for i, r in enumerate([0.0, 1.0]):
        asm.add(scored("p", i, r, version=2), (2, 1))
    prefix = scored("p", 2, 1.0, version=1, off=True, n_tokens=10)
    prefix.rollout.prefix_len = 4
    prefix.rollout.logprobs[4:] = -0.5
    asm.add(prefix, (2, 1))
    (group,) = asm.take(1)
    assert group.min_version() == 1  # its generated tokens are the oldest
    split = AlgorithmConfig(advantage="grpo_split", max_off_policy_steps=2)
    batch, _ = build_batch([group], 3, split)
    sample = next(s for s in batch.samples if s.off_policy)
    assert (sample.prefix_len, sample.response_len, sample.lag) == (4, 10, 2)
    # grpo_split: the baseline is the on-policy samples' mean 0.5 -> +0.5 for the prefix one
    assert sample.advantage == 0.5
    # a whole trace has every token off-policy and no age
    whole = scored("w", 0, 1.0, off=True, n_tokens=5)
    assert (whole.rollout.prefix_len, whole.rollout.generated) == (5, False)


def test_a_rollout_spanning_versions_is_as_old_as_its_oldest_token():
    # sampled from version 3 to version 5; the learner is at 6 and accepts a lag of 2
    asm = GroupAssembler(60)
    for i, (low, high) in enumerate([(3, 5), (6, 6)]):
        s = scored("span", i, float(i), version=low)
        s.rollout.version_max = high
        asm.add(s, (2, 0))
    groups = asm.take(1)
    batch, _ = build_batch(groups, 6, AlgorithmConfig(max_off_policy_steps=3))
    spanned = next(s for s in batch.samples if s.lag)
    assert (spanned.lag, spanned.version_span) == (3, 2)  # 6 - 3, and 5 - 3
    assert batch.stats["lag_max"] == 3 and batch.stats["version_span_max"] == 2
    # lag 3 > 2: dropped although its newest tokens (version 5) are only 1 behind
    strict = AlgorithmConfig(max_off_policy_steps=2, stale="drop")
    batch, dropped = build_batch(groups, 6, strict)
    assert [g.task_id for g in dropped] == ["span"] and not batch.samples


def test_correction_has_a_hard_bound_beyond_which_groups_are_dropped():
    # learner at 10; lags 2 (corrected), 4 (at the bound: corrected), 5 (past it: dropped)
    algo = AlgorithmConfig(max_off_policy_steps=1, stale="correct", max_corrected_lag=4)
    groups = groups_of(("a", [1, 0], 8, False), ("b", [1, 0], 6, False), ("c", [1, 0], 5, False))
    batch, dropped = build_batch(groups, 10, algo)
    assert [g.task_id for g in dropped] == ["c"] and batch.groups == 2
    assert batch.stats["stale_dropped"] == 1 and batch.stats["stale_corrected"] == 2
    assert batch.stats["lag_max"] == 4


def test_the_hard_bound_cannot_be_below_the_accepted_lag():
    with pytest.raises(ValueError, match=r"max_corrected_lag \(1\) must be >= max_off_policy"):
        AlgorithmConfig(max_off_policy_steps=2, max_corrected_lag=1)
