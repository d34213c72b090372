"""The learner's accounts: what happened to every task, and when its scored entries are acked.

``Bookkeeping`` owns
- the outcome counts (``resolved``: trained, stale, incomplete, lost), saved in checkpoints;
- the ledger of the current checkpoint interval (outcome -> task ids), written as
  ``<run>/ledger/step_N.json`` when checkpoint N is: exactly what that checkpoint's weights
  have seen (the union over checkpoints is the run's lineage);
- the scored deliveries received and not yet acked, and the ids of tasks resolved since the
  last ack (a late copy of one of their samples is a duplicate, never a new group).

Entries are acked only when a checkpoint includes their training (or after every step when no
periodic checkpoints are configured), so a learner restarted from its last checkpoint reads
them back and trains them again instead of losing them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from common.schemas import ScoredRollout
from common.transport import Delivery, StreamConsumer

OUTCOMES = ("trained", "stale", "incomplete", "lost")


class Bookkeeping:
    def __init__(self, consumer: StreamConsumer, ledger_dir: Path):
        self.consumer = consumer
        self.ledger_dir = ledger_dir
        self.resolved: Counter[str] = Counter()
        self.ledger: dict[str, list[str]] = {}
        self.unacked: list[Delivery[ScoredRollout]] = []
        self.resolved_since_ack: set[str] = set()

    def hold(self, delivery: Delivery[ScoredRollout]) -> bool:
        """Keep ``delivery`` until its group is accounted for; True if its task is already
        resolved (the sample is a late duplicate and must not start a new group)."""
        self.unacked.append(delivery)
        return delivery.value.rollout.task_id in self.resolved_since_ack

    def resolve(self, task_id: str, outcome: str) -> None:
        """Count the task's group as leaving the learner with ``outcome``."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; known: {OUTCOMES}")
        self.resolved[outcome] += 1
        self.resolved_since_ack.add(task_id)
        self.ledger.setdefault(outcome, []).append(task_id)

    def ack(self, held: set[str]) -> int:
        """Ack every entry received so far except those of ``held`` tasks (groups still being
        collected); returns how many were acked."""
        done = [d for d in self.unacked if d.value.rollout.task_id not in held]
        self.unacked = [d for d in self.unacked if d.value.rollout.task_id in held]
        self.consumer.commit([(d, []) for d in done])
        self.resolved_since_ack.clear()
        return len(done)

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the counts and this interval's ledger."""
        return {"resolved": dict(self.resolved), "ledger": self.ledger}

    def checkpointed(self, step: int) -> None:
        """Checkpoint ``step`` is written: its ledger goes to disk, a new interval starts."""
        self.write_ledger(step, self.ledger)
        self.ledger = {}

    def restore(self, meta: dict[str, Any], step: int) -> None:
        """Resume from a checkpoint's ``meta`` (and write its ledger, if the crash beat it)."""
        self.resolved.update(meta.get("resolved", {}))
        self.write_ledger(step, meta.get("ledger", {}))

    def write_ledger(self, step: int, ledger: dict[str, list[str]]) -> None:
        self.ledger_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.ledger_dir / f".step_{step:08d}.tmp"
        tmp.write_text(json.dumps(ledger))
        tmp.replace(self.ledger_dir / f"step_{step:08d}.json")


__all__ = ["OUTCOMES", "Bookkeeping"]
