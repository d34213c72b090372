import pytest

from tests.unit.verifier_cases import CASES
from verifier.rewards import answer_part, exact_reward, make_reward, math_reward


def test_the_case_table_is_big_enough_and_covers_every_status():
    assert len(CASES) >= 60
    assert {status for _, _, status in CASES} == {
        "ok",
        "wrong",
        "unparsable",
        "no_think_tag",
    }


@pytest.mark.parametrize(("response", "gold", "status"), CASES)
def test_math_reward_table(response, gold, status):
    verdict = math_reward(response, gold, think_tags=True)
    assert verdict.status == status, verdict
    assert verdict.reward == (1.0 if status == "ok" else 0.0)


def test_each_status_carries_its_reason():
    ok = math_reward("<think>x</think> \\boxed{\\frac{1}{2}}", "0.5")
    assert (ok.reward, ok.status, ok.extracted) == (1.0, "ok", "\\frac{1}{2}")
    wrong = math_reward("<think>x</think> \\boxed{3}", "4")
    assert (wrong.status, wrong.extracted) == ("wrong", "3")
    assert math_reward("\\boxed{4}", "4").detail == "response has no </think>"
    assert math_reward("<think></think> no idea", "4").detail == "no answer found in the response"
    assert "parses to nothing" in math_reward("<think></think> \\boxed{4}", "").detail
    assert "compared as text" in math_reward("<think></think> \\boxed{4}", "\\frac{").detail


def test_without_think_tags_the_whole_response_is_judged():
    assert math_reward("\\boxed{4}", "4", think_tags=False).status == "ok"
    assert answer_part("a </think> b </think> c", True) == " b "
    assert answer_part("abc", True) is None
    assert answer_part("abc", False) == "abc"


def test_exact_reward():
    assert exact_reward("<think></think> The answer is \\boxed{12}.", "12").status == "ok"
    assert exact_reward("<think></think> 12", "12").status == "ok"
    assert exact_reward("<think></think> \\boxed{13}", "12").status == "wrong"
    assert exact_reward("<think></think>  ", "12").status == "unparsable"
    assert exact_reward("\\boxed{12}", "12").status == "no_think_tag"


def test_unknown_reward_name_is_a_clear_error():
    assert make_reward("math") is math_reward
    with pytest.raises(
        ValueError, match=r"unknown reward function 'maths'; built-in: auto, choice, exact, math;"
    ):
        make_reward("maths")


def test_missing_think_tag_is_decided_without_a_reward_function():
    from verifier.rewards import missing_think_tag

    verdict = missing_think_tag("the answer is 4", True)
    assert verdict is not None and (verdict.reward, verdict.status) == (0.0, "no_think_tag")
    assert missing_think_tag("<think> hmm </think> 4", True) is None
    assert missing_think_tag("the answer is 4", False) is None


def test_a_reward_by_import_path_and_clear_errors_for_bad_ones():
    import pytest

    from common.config import VerifierConfig
    from tests.integration.slow_reward import score
    from verifier.rewards import make_reward

    assert make_reward("tests.integration.slow_reward:score") is score
    with pytest.raises(ValueError, match="has no function 'nothing'"):
        make_reward("tests.integration.slow_reward:nothing")
    with pytest.raises(ValueError, match=r"or give an import path package\.module:function"):
        make_reward("mathh")
    with pytest.raises(ValueError, match="String should match pattern"):
        VerifierConfig(reward="not a path")
    assert VerifierConfig(reward="pkg.mod:fn").reward == "pkg.mod:fn"
