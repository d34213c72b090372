"""Reward functions: pure ``(response, gold, think_tags) -> Verdict``, chosen by name: a
built-in here, a plugin installed under the ``luffy.rewards`` entry-point group, or an import
path ``package.module:function`` (README, "Verifier", has the contract).

``math`` is LUFFY's rule: with think templates the response must contain ``</think>`` and the
answer is the text after the first one (up to a second); reward 1 iff
``verify(parse("$" + gold + "$"), parse(answer))``.
Every outcome has a status (``ok``, ``wrong``, ``unparsable``, ``no_think_tag``, ``error``;
the pool adds ``timeout``) so a failure is never silently a plain 0.

math-verify's own signal-based timeouts are disabled here: the scoring pool enforces the hard
limit from outside (see ``verifier.pool``), which works in any thread and reports ``timeout``
instead of quietly returning "wrong".
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Protocol

THINK_CLOSE = "</think>"


@dataclass(frozen=True, slots=True)
class Verdict:
    reward: float
    status: str
    extracted: str = ""
    detail: str = ""


class RewardFn(Protocol):
    def __call__(self, response: str, gold: str, think_tags: bool) -> Verdict: ...


def answer_part(response: str, think_tags: bool) -> str | None:
    """The text that is judged (LUFFY's rule): the part between the *first* ``</think>`` and
    the next one, i.e. ``response.split("</think>")[1]`` (None if the tag is required and
    missing). A response that closes its thinking twice is judged on what follows the first
    close, not on a later answer."""
    if not think_tags:
        return response
    parts = response.split(THINK_CLOSE)
    return parts[1] if len(parts) > 1 else None


def missing_think_tag(response: str, think_tags: bool) -> Verdict | None:
    """The verdict of every reward function for a response without the required closing tag
    (None when the response is to be judged): cheap enough to decide without a worker."""
    if think_tags and THINK_CLOSE not in response:
        return Verdict(0.0, "no_think_tag", "", f"response has no {THINK_CLOSE}")
    return None


def _quiet_math_verify() -> None:
    # math-verify logs every unparsable input at WARNING; statuses carry that information
    for name in (
        "math_verify",
        "math_verify.parser",
        "math_verify.grader",
        "latex2sympy2_extended",
    ):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def math_reward(response: str, gold: str, think_tags: bool = True) -> Verdict:
    """LUFFY's rule: 1 iff ``verify(parse("$" + gold + "$"), parse(answer))`` with
    math-verify's default extraction. A gold that math-verify turns into nothing scores 0 like
    a wrong answer (its detail says so); ``error`` is only what math-verify raises on."""
    from math_verify import parse, verify

    _quiet_math_verify()
    if (verdict := missing_think_tag(response, think_tags)) is not None:
        return verdict
    answer = answer_part(response, think_tags)
    try:
        gold_parsed = parse("$" + gold + "$", parsing_timeout=None, raise_on_error=True)
        predicted = parse(answer, parsing_timeout=None, raise_on_error=True)
        if not predicted:
            return Verdict(0.0, "unparsable", "", "no answer found in the response")
        correct = verify(gold_parsed, predicted, timeout_seconds=None, raise_on_error=True)
    except Exception as exc:  # sympy/antlr raise many types on hostile input
        return Verdict(0.0, "error", "", f"{type(exc).__name__}: {str(exc)[:200]}")
    extracted = str(predicted[-1])[:500]
    detail = ""
    if not gold_parsed:
        detail = f"gold answer {gold[:80]!r} parses to nothing"
    elif all(isinstance(g, str) for g in gold_parsed):
        detail = f"gold answer {gold[:80]!r} compared as text (math-verify found no math in it)"
    return Verdict(1.0 if correct else 0.0, "ok" if correct else "wrong", extracted, detail)


def _strip_boxed(text: str) -> str:
    text = text.strip()
    start = text.rfind("\\boxed{")
    if start >= 0 and text.endswith("}"):
        return text[start + len("\\boxed{") : -1].strip()
    return text


def exact_reward(response: str, gold: str, think_tags: bool = True) -> Verdict:
    """Plain string match of the (boxed) answer after ``</think>``: for tests and toy tasks."""
    if (verdict := missing_think_tag(response, think_tags)) is not None:
        return verdict
    answer = answer_part(response, think_tags)
    extracted = _strip_boxed(answer.strip().rstrip("."))
    if not extracted:
        return Verdict(0.0, "unparsable", "", "empty answer")
    correct = extracted == gold.strip()
    return Verdict(1.0 if correct else 0.0, "ok" if correct else "wrong", extracted[:500])


_CHOICE_PATTERNS = [
    re.compile(r"\\boxed\{\s*\(?([A-J])\)?\s*\}"),
    re.compile(r"answer is[:\s]*\(?([A-J])\)?(?![A-Za-z])", re.IGNORECASE),
    re.compile(r"answer[:\s]+\(?([A-J])\)?(?![A-Za-z])", re.IGNORECASE),
    re.compile(r"^\s*\(?([A-J])\)?[.)]?\s*$"),
]


def choice_reward(response: str, gold: str, think_tags: bool = True) -> Verdict:
    """Multiple choice (ARC-c, GPQA, MMLU-Pro): the last letter A-J given as ``\\boxed{C}``,
    "the answer is (C)", "Answer: C" or a lone letter, compared with the gold letter."""
    if (verdict := missing_think_tag(response, think_tags)) is not None:
        return verdict
    answer = answer_part(response, think_tags)
    gold_letter = gold.strip().strip("()").upper()
    if len(gold_letter) != 1 or not "A" <= gold_letter <= "J":
        return Verdict(0.0, "error", "", f"gold {gold[:20]!r} is not a choice letter A-J")
    for pattern in _CHOICE_PATTERNS:
        found = pattern.findall(answer)
        if found:
            letter = found[-1].upper()
            ok = letter == gold_letter
            return Verdict(1.0 if ok else 0.0, "ok" if ok else "wrong", letter)
    return Verdict(0.0, "unparsable", "", "no choice letter found")


REWARDS: dict[str, RewardFn] = {"math": math_reward, "exact": exact_reward, "choice": choice_reward}
CHOICE_SOURCES = ("arc", "gpqa", "mmlu")


def reward_for_source(data_source: str, default: str = "math") -> str:
    """LUFFY's out-of-distribution benchmarks (ARC-c, GPQA-diamond, MMLU-Pro) are multiple
    choice; everything else uses ``default``."""
    source = data_source.lower()
    return "choice" if any(tag in source for tag in CHOICE_SOURCES) else default


PLUGIN_GROUP = "luffy.rewards"


@functools.cache
def plugins() -> dict[str, EntryPoint]:
    """Installed reward plugins by name (the ``luffy.rewards`` entry-point group). Read once
    per process: a scan of every installed package's metadata costs tens of ms, and the
    scoring workers resolve the name of every job they score."""
    return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}


def make_reward(name: str) -> RewardFn:
    """The reward function called ``name``: a built-in, else an installed plugin of that name,
    else an import path ``package.module:function``. Raises ValueError or ImportError."""
    if name in REWARDS:
        return REWARDS[name]
    if name in plugins():
        ep = plugins()[name]
        return _load(ep.module, ep.attr, f"{name} (plugin {ep.value})")
    module, sep, attr = name.partition(":")
    if not sep:
        raise ValueError(
            f"unknown reward function {name!r}; built-in: {', '.join(sorted([*REWARDS, 'auto']))}; "
            f"installed plugins ({PLUGIN_GROUP}): {', '.join(sorted(plugins())) or 'none'}; "
            "or give an import path package.module:function"
        )
    return _load(module, attr, name)


def reward_module(name: str) -> str | None:
    """The module a reward name loads its function from (None for the built-ins): the scoring
    pool imports it into its forkserver so each worker starts with the plugin loaded."""
    if name in REWARDS or name == "auto":
        return None
    if name in plugins():
        return plugins()[name].module
    module, sep, _ = name.partition(":")
    return module if sep else None


def _load(module: str, attr: str, what: str) -> RewardFn:
    fn = importlib.import_module(module)
    for part in attr.split("."):  # entry points may name a nested attribute (Class.method)
        fn = getattr(fn, part, None)
    if not callable(fn):
        raise ValueError(f"reward {what}: {module} has no function {attr!r}")
    return fn


__all__ = [
    "PLUGIN_GROUP",
    "REWARDS",
    "RewardFn",
    "Verdict",
    "answer_part",
    "exact_reward",
    "make_reward",
    "math_reward",
    "missing_think_tag",
    "plugins",
    "reward_module",
]
