"""Misbehaving reward plugins for tests, registered under ``luffy.rewards`` by a throwaway
distribution that the tests put on the path (``plugin_site``), as a third party's would be."""

import time

from verifier.rewards import Verdict


def sleepy(response: str, gold: str, think_tags: bool) -> Verdict:
    time.sleep(3600)  # far past any time limit: the pool must cut it off
    return Verdict(1.0, "ok")


def not_a_verdict(response: str, gold: str, think_tags: bool) -> float:
    return 1.0  # a plain number where a Verdict is owed


ENTRY_POINTS = {
    "sleepy": "tests.integration.plugin_rewards:sleepy",
    "not_a_verdict": "tests.integration.plugin_rewards:not_a_verdict",
}


def plugin_site(root):
    """A folder holding an installed-looking distribution whose entry points are the plugins
    above; put it on a process's path and ``luffy.rewards`` lists them."""
    dist = root / "luffy_test_plugins-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: luffy-test-plugins\nVersion: 0.1\n"
    )
    lines = [f"{name} = {value}" for name, value in ENTRY_POINTS.items()]
    (dist / "entry_points.txt").write_text("[luffy.rewards]\n" + "\n".join(lines) + "\n")
    return root


def loaded(response: str, gold: str, think_tags: bool) -> Verdict:
    """ok iff module ``gold`` was already imported in this worker (by the forkserver's
    preload) before this call imported anything."""
    import sys

    return Verdict(1.0, "ok") if gold in sys.modules else Verdict(0.0, "wrong")
