"""A reward function for tests, loaded by import path (``verifier.reward =
"tests.integration.slow_reward:score"``): the math reward, made to take ``DELAY_S`` per answer,
as a verifier near its time limit does."""

import time

from verifier.rewards import Verdict, math_reward

DELAY_S = 0.25


def score(response: str, gold: str, think_tags: bool) -> Verdict:
    started = time.monotonic()
    verdict = math_reward(response, gold, think_tags)
    time.sleep(max(0.0, DELAY_S - (time.monotonic() - started)))  # the slowness under test
    return verdict
