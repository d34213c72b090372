import pytest

from services.evaluate import EvalOptions, luffy_log_lines, select, summarize
from verifier.rewards import choice_reward, reward_for_source


def test_summary_against_a_hand_count():
    rows = [
        {"id": "a1", "data_source": "A", "sample": 0, "reward": 1.0},
        {"id": "a1", "data_source": "A", "sample": 1, "reward": 0.0},
        {"id": "a2", "data_source": "A", "sample": 0, "reward": 0.0},
        {"id": "a2", "data_source": "A", "sample": 1, "reward": 0.0},
        {"id": "b1", "data_source": "B", "sample": 0, "reward": 1.0},
        {"id": "b1", "data_source": "B", "sample": 1, "reward": 1.0},
    ]
    report = summarize(rows)
    # A: rewards 1,0,0,0 -> avg@2 = 0.25; prompts with a correct sample 1 of 2 -> pass@2 = 0.5
    assert report["sources"]["A"] == {
        "prompts": 2,
        "samples": 4,
        "avg_at_k": 0.25,
        "pass_at_k": 0.5,
    }
    # B: 1,1 -> 1.0 and 1.0; overall = mean of avg@k over sources = (0.25 + 1) / 2
    assert report["sources"]["B"] == {"prompts": 1, "samples": 2, "avg_at_k": 1.0, "pass_at_k": 1.0}
    assert report["overall_avg_at_k"] == 0.625
    assert summarize([]) == {"sources": {}, "overall_avg_at_k": 0.0}


@pytest.mark.parametrize(
    ("response", "status"),
    [
        ("</think> The answer is (C).", "ok"),
        ("</think> \\boxed{C}", "ok"),
        ("</think> Answer: C", "ok"),
        ("</think> C", "ok"),
        ("</think> \\boxed{B}", "wrong"),
        ("</think> the answer is A, no wait, the answer is C", "ok"),
        ("</think> I would say the cat", "unparsable"),
        ("The answer is C", "no_think_tag"),
    ],
)
def test_choice_reward(response, status):
    assert choice_reward(response, "C").status == status


def test_choice_reward_rejects_a_gold_that_is_no_letter_and_sources_pick_the_reward():
    assert choice_reward("</think> \\boxed{C}", "42").status == "error"
    assert [
        reward_for_source(s) for s in ("arc_c", "gpqa_diamond", "mmlu_pro", "aime24", "pick")
    ] == ["choice", "choice", "choice", "math", "math"]


def test_repeated_rows_are_samples_of_one_prompt_and_sources_are_not_pooled():
    # LUFFY's valid.all repeats an AIME row k times: ids differ, the prompt text is the same
    rows = [
        {"id": str(i), "data_source": "aime", "sample": 0, "reward": r, "prompt": "P"}
        for i, r in enumerate([1.0, 0.0, 0.0, 0.0])
    ]
    rows += [{"id": "9", "data_source": "math", "sample": 0, "reward": 1.0, "prompt": "M"}]
    report = summarize(rows, skipped=[{"id": "7", "data_source": "math", "prompt_tokens": 5000}])
    # aime: one prompt, 4 samples: avg@4 = 1/4, pass@4 = 1; math: 1.0
    assert report["sources"]["aime"] == {
        "prompts": 1,
        "samples": 4,
        "avg_at_k": 0.25,
        "pass_at_k": 1.0,
    }
    # overall = (0.25 + 1.0) / 2 = 0.625 (pooled over the 5 samples it would be 0.4)
    assert report["overall_avg_at_k"] == 0.625
    assert report["skipped"] == {
        "count": 1,
        "prompts": [{"id": "7", "data_source": "math", "prompt_tokens": 5000}],
    }
    assert luffy_log_lines(report) == "aime: 0.25\nmath: 1.0\navg acc: 0.625\n"


def test_select_sources_then_limit():
    from learner.data import DataError, Example

    examples = [Example(str(i), "q", "1", data_source="ab"[i % 2]) for i in range(6)]
    opts = EvalOptions(sources=("b",), limit=2)
    assert [e.id for e in select(examples, opts)] == ["1", "3"]
    assert len(select(examples, EvalOptions(limit=4))) == 4
    with pytest.raises(DataError, match=r"unknown data source\(s\) c; the file has \['a', 'b'\]"):
        select(examples, EvalOptions(sources=("c",)))


def test_each_held_out_prompt_samples_with_its_own_seed():
    from learner.evaluation import eval_seed

    seeds = [eval_seed(40, i) for i in range(64)]
    assert len(set(seeds)) == 64  # one seed a round made its prompts pass or fail together
    assert seeds == [eval_seed(40, i) for i in range(64)]  # reproducible
    assert eval_seed(60, 0) != eval_seed(40, 0)


def test_a_held_out_round_says_what_went_wrong():
    """avg@k and pass@k by hand, and the failures split by verdict, with the share of responses
    cut by the length cap (a dip of the held-out reward is one of these, issue #18)."""
    from common.schemas import Rollout, ScoredRollout
    from learner.evaluation import Round

    def scored(task, reward, status, tokens, finish="stop"):
        ids = list(range(tokens))
        rollout = Rollout(f"{task}/{tokens}", task, 0, [1], ids, [-1.0] * tokens, "t", "1", 0)
        rollout.finish_reason = finish
        return ScoredRollout(rollout, reward, status)

    round_ = Round(40, {"a": 2, "b": 2})
    for s in (
        scored("a", 1.0, "ok", 10),
        scored("a", 0.0, "wrong", 20),
        scored("b", 0.0, "unparsable", 40, "length"),
        scored("b", 0.0, "wrong", 10),
    ):
        round_.add(s)
    result = round_.result()
    assert result["reward_mean"] == 0.25 and result["pass_at_k"] == 0.5 and result["complete"]
    assert result["status_counts"] == {"ok": 1, "unparsable": 1, "wrong": 2}
    assert result["truncated_share"] == 0.25 and result["response_len_mean"] == 20.0
    assert (result["version_min"], result["version_max"]) == (0, 0)
    late = scored("b", 0.0, "wrong", 5)
    late.rollout.policy_version, late.rollout.version_max = 3, 5
    round_.add(late)
    assert (round_.result()["version_min"], round_.result()["version_max"]) == (0, 5)


def test_a_wrong_sample_says_where_it_left_the_trace():
    """The first position a wrong sample differs from its trace, with the probability its
    token had: a near-tie (0.4) tells a fragile step from sampling noise (issue #18)."""
    import math

    from common.schemas import Rollout, ScoredRollout
    from learner.evaluation import Round, first_divergence

    def decode(ids):
        return "".join(chr(ord("a") + i) for i in ids)

    trace = [0, 1, 2, 3, 9]
    lp = [math.log(0.9), math.log(0.8), math.log(0.4), math.log(0.5)]
    div = first_divergence([0, 1, 4, 3], lp, trace, decode)
    assert (div.pos, div.expected, div.got) == (2, "c", "e")
    assert abs(div.prob - 0.4) < 1e-9
    short = first_divergence([0, 1], lp[:2], trace, decode)
    assert (short.pos, short.expected, short.got, short.prob) == (2, "c", "<end>", 0.0)
    assert first_divergence(trace, [0.0] * 5, trace, decode) is None

    def scored(task, reward, ids):
        rollout = Rollout(f"{task}/{len(ids)}", task, 0, [1], ids, [-1.0] * len(ids), "t", "1", 0)
        return ScoredRollout(rollout, reward, "ok" if reward > 0 else "wrong")

    round_ = Round(20, {"a": 3})
    round_.add(scored("a", 0.0, [0, 1, 4]), first_divergence([0, 1, 4], lp, trace, decode))
    round_.add(scored("a", 0.0, [0, 1, 5]), first_divergence([0, 1, 5], lp, trace, decode))
    round_.add(scored("a", 1.0, trace), None)
    result = round_.result()
    assert result["wrong_vs_trace"] == 2
    assert result["diverge_top"] == [[2, "c", "e", 1], [2, "c", "f", 1]]
    assert result["diverge_prob_mean"] == 0.4
