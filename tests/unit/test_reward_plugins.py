"""Reward plugins: the shipped ``json_answer`` by hand-worked cases, and how a configured name
resolves (built-in, then an installed ``luffy.rewards`` entry point, then an import path)."""

from importlib.metadata import EntryPoint
from types import SimpleNamespace

import pytest

from common.config import VerifierConfig
from common.shell import StartupError
from verifier import rewards
from verifier.plugins.json_answer import json_answer_reward
from verifier.rewards import make_reward, math_reward, reward_module

GOLD = '{"name": "Ada", "born": 1815, "tags": ["math", "poetry"], "alive": false}'


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        # same data, other key order and spacing
        ('{"alive":false,"tags":["math","poetry"],"born":1815,"name":"Ada"}', "ok"),
        # a number is a number: 1815 and 1815.0 (and 1.815e3) are the same JSON value
        ('{"name": "Ada", "born": 1.815e3, "tags": ["math", "poetry"], "alive": false}', "ok"),
        # one code fence around the object is allowed
        (f"```json\n{GOLD}\n```", "ok"),
        # array order matters
        ('{"name": "Ada", "born": 1815, "tags": ["poetry", "math"], "alive": false}', "wrong"),
        # false is not 0 (Python alone would say False == 0)
        ('{"name": "Ada", "born": 1815, "tags": ["math", "poetry"], "alive": 0}', "wrong"),
        # a missing key, an extra key
        ('{"name": "Ada", "born": 1815, "tags": ["math", "poetry"]}', "wrong"),
        (
            '{"name": "Ada", "born": 1815, "tags": ["math", "poetry"], "alive": false, "x": 1}',
            "wrong",
        ),
        # "1815" the string is not 1815 the number
        ('{"name": "Ada", "born": "1815", "tags": ["math", "poetry"], "alive": false}', "wrong"),
        ("The answer is Ada, born 1815.", "unparsable"),  # not JSON
        ('["Ada", 1815]', "unparsable"),  # JSON, not an object
        ('{"name": "Ada", "born": NaN}', "unparsable"),  # NaN is not JSON
        ("", "unparsable"),
        ("[" * 100_000 + "]" * 100_000, "unparsable"),  # nested past the parser's depth
    ],
)
def test_json_answer_cases(answer, status):
    verdict = json_answer_reward(f"<think>recall her details</think>\n{answer}", GOLD, True)
    assert verdict.status == status, verdict
    assert verdict.reward == (1.0 if status == "ok" else 0.0)


def test_json_answer_think_tags_and_a_bad_gold():
    answer = '{"a": 1}'
    assert json_answer_reward(answer, '{"a": 1}', think_tags=True).status == "no_think_tag"
    assert json_answer_reward(answer, '{"a": 1}', think_tags=False).status == "ok"
    # only the text after the first </think> is judged
    verdict = json_answer_reward('<think>{"a": 2}</think> {"a": 1}', '{"a": 1}', True)
    assert (verdict.status, verdict.extracted) == ("ok", '{"a": 1}')
    bad = json_answer_reward(answer, "Ada", think_tags=False)  # the task's data is broken
    assert bad.status == "error" and bad.detail.startswith("gold is not a JSON object")


@pytest.fixture
def fake_plugins(monkeypatch):
    """Installed plugins as the entry-point group would list them, one shadowing a built-in."""
    table = {
        "math": EntryPoint("math", "verifier.plugins.json_answer:json_answer_reward", "g"),
        "exact_json": EntryPoint(
            "exact_json", "verifier.plugins.json_answer:json_answer_reward", "g"
        ),
        "broken": EntryPoint("broken", "verifier.plugins.json_answer:nothing", "g"),
    }
    monkeypatch.setattr(rewards, "plugins", lambda: table)


def test_resolution_order_built_in_then_entry_point_then_import_path(fake_plugins):
    assert make_reward("math") is math_reward  # a built-in wins over a plugin of its name
    assert make_reward("exact_json") is json_answer_reward
    assert make_reward("tests.integration.slow_reward:score").__name__ == "score"
    assert reward_module("math") is None and reward_module("auto") is None
    assert reward_module("exact_json") == "verifier.plugins.json_answer"
    assert reward_module("pkg.mod:fn") == "pkg.mod"
    with pytest.raises(ValueError, match=r"broken \(plugin .*\): .* has no function 'nothing'"):
        make_reward("broken")


def test_an_unknown_name_lists_built_ins_and_installed_plugins_on_one_line(fake_plugins):
    with pytest.raises(ValueError) as info:
        make_reward("json_anwser")
    assert str(info.value) == (
        "unknown reward function 'json_anwser'; built-in: auto, choice, exact, math; "
        "installed plugins (luffy.rewards): broken, exact_json, math; "
        "or give an import path package.module:function"
    )


def test_the_shipped_plugin_is_installed_as_an_entry_point():
    """Found through the package's metadata, as a third party's plugin would be."""
    ep = rewards.plugins()["json_answer"]
    assert ep.group == "luffy.rewards" and ep.load() is json_answer_reward
    assert make_reward("json_answer") is json_answer_reward


def test_config_takes_plugin_names_and_the_verifier_refuses_an_unknown_one():
    assert VerifierConfig(reward="json_answer").reward == "json_answer"
    with pytest.raises(ValueError, match="String should match pattern"):
        VerifierConfig(reward="json-answer")  # names are identifiers
    from verifier.worker import VerifierWorker

    ctx = SimpleNamespace(config=SimpleNamespace(verifier=VerifierConfig(reward="nope")))
    with pytest.raises(StartupError, match=r"verifier.reward: unknown reward .*json_answer"):
        VerifierWorker().setup(ctx)
