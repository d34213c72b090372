"""``json_answer``: a reward for tasks whose answer is a JSON object (structured extraction,
tool-call arguments, form filling), the example of a reward plugin outside math.

The answer (the text after ``</think>`` when think tags are on, optionally inside one markdown
code fence) must be a JSON object; the gold is a JSON object. Reward 1 iff both hold the same
data: key order and whitespace do not matter, numbers compare by value (``1`` equals ``1.0``),
and ``true`` is not ``1``. Statuses: ``ok``, ``wrong``, ``unparsable`` (not JSON, or JSON that
is not an object), ``no_think_tag``, and ``error`` for a gold that is not a JSON object.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from verifier.rewards import Verdict, answer_part, missing_think_tag

_FENCE = re.compile(r"^```[\w-]*[ \t]*\n(.*)\n?```$", re.DOTALL)


def json_answer_reward(response: str, gold: str, think_tags: bool = True) -> Verdict:
    if (verdict := missing_think_tag(response, think_tags)) is not None:
        return verdict
    # RecursionError: JSON nested deeper than the parser allows is refused, not a crash
    try:
        expected = _canonical(parse_object(gold))
    except (ValueError, RecursionError) as exc:
        return Verdict(0.0, "error", "", f"gold is not a JSON object: {exc}"[:200])
    text = unfenced(answer_part(response, think_tags))
    try:
        got = _canonical(parse_object(text))
    except (ValueError, RecursionError) as exc:
        return Verdict(0.0, "unparsable", text[:500], str(exc)[:200])
    ok = got == expected
    return Verdict(1.0 if ok else 0.0, "ok" if ok else "wrong", text[:500])


def unfenced(answer: str) -> str:
    """The answer without surrounding whitespace and one enclosing code fence (```json)."""
    text = answer.strip()
    match = _FENCE.match(text)
    return match.group(1).strip() if match else text


def parse_object(text: str) -> dict[str, Any]:
    """Strict JSON (no NaN or Infinity), numbers as exact decimals; the top level must be an
    object."""
    value = json.loads(text, parse_float=Decimal, parse_int=Decimal, parse_constant=_reject)
    if not isinstance(value, dict):
        raise ValueError(f"JSON {type(value).__name__}, not an object")
    return value


def _reject(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _canonical(value: Any) -> Any:
    """A form in which equal JSON data compares equal and nothing else does: Python alone
    would call ``true`` equal to ``1`` (bool is an int) and a list equal to nothing else."""
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return ("array", tuple(_canonical(item) for item in value))
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, Decimal):
        return ("number", value)
    return ("string", value)


__all__ = ["json_answer_reward", "parse_object", "unfenced"]
