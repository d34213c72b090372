"""Reward plugins shipped with luffy-async, registered under the ``luffy.rewards`` entry-point
group in pyproject.toml exactly as a third-party package registers its own."""
