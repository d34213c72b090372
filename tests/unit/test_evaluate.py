import pytest

from services.evaluate import summarize
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
