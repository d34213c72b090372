"""Our ``math`` reward against LUFFY's rule on a table of real-looking golds.

LUFFY's rule (its reward manager and math-verify reward, written out in ``luffy_reward``):
the decoded response gets ``<think>\\n`` in front (the prompt ended with it), the judged text
is ``split("</think>")[1]`` (no closing tag: 0), and the reward is
``verify(parse("$" + gold + "$"), parse(text))`` with math-verify's defaults, 1 or 0.
"""

from math_verify import parse, verify

from tests.unit.golds import GOLDS
from verifier.rewards import math_reward

WRONG = "987654321"


def luffy_reward(response: str, gold: str) -> float:
    text = "<think>\n" + response
    if "</think>" not in text:
        return 0.0
    judged = text.split("</think>")[1]
    return 1.0 if verify(parse("$" + gold + "$"), parse(judged)) else 0.0


def stated(gold: str) -> str:
    """The gold as a model would state it: boxed, or as written when it carries its own $."""
    if "$" in gold:
        return f"The final answer is {gold}."
    return f"So the answer is $\\boxed{{{gold}}}$."


def responses(gold: str) -> dict[str, str]:
    return {
        "right": f"Let me work it out.\n</think>\n{stated(gold)}",
        "wrong": f"Let me work it out.\n</think>\nSo the answer is $\\boxed{{{WRONG}}}$.",
        # closes its thinking twice: the first close decides, the later right answer is ignored
        "twice": f"a\n</think>\n$\\boxed{{{WRONG}}}$ </think> {stated(gold)}",
        "untagged": stated(gold),
    }


def test_the_table_covers_benchmarks_and_answer_kinds():
    sources = {source for source, _ in GOLDS}
    assert len(GOLDS) >= 200
    assert {"math", "aime", "amc", "olympiad_bench", "minerva"} <= sources
    assert {"interval", "tuple", "matrix", "units", "text", "letter"} <= sources


def test_math_reward_scores_every_gold_as_luffy_does():
    mismatches, errors, right = [], [], 0
    for source, gold in GOLDS:
        for kind, response in responses(gold).items():
            ours = math_reward(response, gold, think_tags=True)
            expected = luffy_reward(response, gold)
            if ours.reward != expected:
                mismatches.append((source, gold, kind, ours, expected))
            if ours.status == "error":  # math-verify raised: LUFFY's defaults would have too
                errors.append((source, gold, kind, ours))
            right += kind == "right" and ours.reward == 1.0
    assert not mismatches, mismatches[:5]
    assert not errors, errors[:5]
    # the table means something: most golds are matched by their own statement
    assert right >= 0.9 * len(GOLDS), right


def test_golds_seen_refused_before_are_scored():
    for gold in ("E_{1},E_{2}", "np.arcsin(10/13)", "SRMC=LRMC"):
        verdict = math_reward(f"x</think> $\\boxed{{{gold}}}$", gold)
        assert (verdict.reward, verdict.status) == (1.0, "ok"), (gold, verdict)
        assert math_reward(f"x</think> $\\boxed{{{WRONG}}}$", gold).status == "wrong"
