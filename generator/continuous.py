"""Continuous scheduling: the engine is kept full and tasks leave it one by one.

Parts and ownership:
- ``ContinuousScheduler`` (the generator's main thread) owns the tasks in the engine: which
  delivery each engine request belongs to, the completions come back so far, how many
  sequences are in flight. Each ``step`` admits tasks while their sequences fit in
  ``generator.max_inflight_sequences``, runs one engine step, and hands back the tasks whose
  requests have all finished; the worker publishes those (commit + ack per task, atomic: a
  task whose generator dies while in flight stays pending and another replica reclaims it).
- The engine (``StreamingEngine``) owns the sequences themselves. A weight push is loaded by
  the worker between two ``step`` calls; the engine labels the tokens sampled after it with
  the new version (``Completion.versions``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from common.schemas import Task
from common.transport import Delivery
from generator.engines import Completion, GenRequest, StreamingEngine


@dataclass
class Occupancy:
    """How full the engine ran: sequences running per decode step over the capacity, summed
    over steps (continuous: per engine step, capacity ``max_inflight_sequences``; batch: per
    call, each sequence runs for its length while the call lasts as long as the longest,
    capacity ``max_batch_tasks`` x the task's sequences)."""

    running: int = 0
    capacity: int = 0

    def add(self, running: int, capacity: int) -> None:
        self.running += running
        self.capacity += capacity

    def add_batch(self, lengths: list[int], capacity: int) -> None:
        self.add(sum(lengths), max(lengths, default=0) * capacity)

    def share(self) -> float:
        return self.running / self.capacity if self.capacity else 0.0


@dataclass
class InFlight:
    """One task in the engine: its requests (with the trace prefix each continues) and the
    completions of those finished so far."""

    delivery: Delivery[Task]
    plan: list[tuple[GenRequest, list[int]]]
    started: float = field(default_factory=time.perf_counter)
    results: dict[int, list[Completion]] = field(default_factory=dict)

    @property
    def sequences(self) -> int:
        return sum(req.n for req, _ in self.plan)

    def done(self) -> bool:
        return len(self.results) == len(self.plan)

    def samples(self) -> list[tuple[list[int], Completion]]:
        """(prefix, completion) per sample: the n samples, then one per prefix."""
        return [(prefix, c) for j, (_, prefix) in enumerate(self.plan) for c in self.results[j]]


class ContinuousScheduler:
    def __init__(self, engine: StreamingEngine, max_sequences: int):
        self.engine, self.max_sequences = engine, max_sequences
        self.tasks: dict[str, InFlight] = {}  # task id -> its state
        self.sequences = 0  # sequences of the tasks in flight
        self.steps = 0
        self.occupancy = Occupancy()

    def room(self, per_task: int) -> int:
        """How many more tasks of ``per_task`` sequences fit (an empty engine takes one
        whatever its size, so a task larger than the limit still runs)."""
        if not self.tasks:
            return max(1, self.max_sequences // max(1, per_task))
        return max(0, (self.max_sequences - self.sequences) // max(1, per_task))

    def admit(self, delivery: Delivery[Task], plan: list[tuple[GenRequest, list[int]]]) -> None:
        task_id = delivery.value.task_id
        if task_id in self.tasks:  # the stream handed out the same task twice: one suffices
            return
        state = InFlight(delivery, plan)
        for j, (req, _) in enumerate(plan):
            self.engine.submit(f"{task_id}#{j}", req)
        self.tasks[task_id] = state
        self.sequences += state.sequences

    def step(self) -> list[InFlight]:
        """One engine step; the tasks it finished (every request of each done)."""
        if not self.tasks:
            return []
        self.steps += 1
        self.occupancy.add(self.sequences, self.max_sequences)
        finished = []
        for key, completions in self.engine.step():
            task_id, _, j = key.rpartition("#")
            state = self.tasks.get(task_id)
            if state is None:  # aborted meanwhile
                continue
            state.results[int(j)] = completions
            if state.done():
                finished.append(self.tasks.pop(task_id))
                self.sequences -= state.sequences
        return finished

    def abort_all(self) -> int:
        """Drop every task in flight (their deliveries stay pending: reclaimed later)."""
        keys = [f"{t}#{j}" for t, s in self.tasks.items() for j in range(len(s.plan))]
        if keys:
            self.engine.abort(keys)
        dropped = len(self.tasks)
        self.tasks.clear()
        self.sequences = 0
        return dropped

    def status(self) -> dict[str, Any]:
        return {
            "tasks": len(self.tasks),
            "sequences": self.sequences,
            "max_sequences": self.max_sequences,
            "engine_steps": self.steps,
        }


__all__ = ["ContinuousScheduler", "InFlight", "Occupancy"]
