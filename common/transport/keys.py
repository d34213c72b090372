"""Every Redis key of a run, under the hash tag ``luffy:{run}:`` (one cluster slot), and the
table of streams with the consumer group that reads each (DESIGN.md wire protocol)."""

from __future__ import annotations

from dataclasses import dataclass

# stream name -> the consumer group that reads it
STREAM_GROUPS = {"prompts": "generators", "rollouts": "verifiers", "scored": "learner"}


@dataclass(frozen=True)
class Keys:
    """All keys of one run. The braces make ``{run}`` a Redis Cluster hash tag."""

    run: str

    @property
    def prefix(self) -> str:
        return f"luffy:{{{self.run}}}:"

    def stream(self, name: str) -> str:
        return f"{self.prefix}{name}"

    @property
    def deadletter(self) -> str:
        return self.stream("deadletter")

    def done(self, group: str) -> str:
        return f"{self.prefix}done:{group}"

    def errors(self, group: str) -> str:
        return f"{self.prefix}errors:{group}"

    def member(self, role: str, member_id: str) -> str:
        return f"{self.prefix}members:{role}:{member_id}"

    def members_pattern(self, role: str) -> str:
        return f"{self.prefix}members:{role}:*"

    @property
    def policy_version(self) -> str:
        return f"{self.prefix}policy_version"

    @property
    def incarnation(self) -> str:
        """The run marker: a random id the learner sets when the run's state is created; gone
        or different means Redis lost that state (restarted without persistence, flushed)."""
        return f"{self.prefix}incarnation"

    @property
    def sync(self) -> str:
        return f"{self.prefix}sync"


__all__ = ["STREAM_GROUPS", "Keys"]
