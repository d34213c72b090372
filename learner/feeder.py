"""The feeder: turns training examples into tasks on ``prompts`` (and their off-policy traces
into rollouts on ``rollouts``, so the verifiers score them like any sample).

State it owns (saved in checkpoints): the cursor (epoch, position in that epoch's seeded
permutation) and the in-flight tasks (fed, not yet trained or dropped). It never keeps more
than ``(max_off_policy_steps + 1) * batch_prompts`` tasks in flight (AReaL-style admission),
which bounds how stale a rollout can be. Task ids are derived from the cursor
(``e<epoch>-<position>``), so a task re-fed after a restart has the id it had before and the
generators' and verifiers' dedupe keeps it from being produced twice.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from common.config import Config
from common.schemas import Rollout, Sampling, Task, encode_rollout, encode_task
from common.transport import Publisher
from learner.data import Example
from learner.objective import Objective
from learner.prefixes import prefix_ratios, prefix_tokens
from learner.prompts import prompt_text, text_ids, trace_ids, trace_text


@dataclass
class Cursor:
    epoch: int = 0
    position: int = 0


@dataclass
class FedTask:
    task_id: str
    index: int  # example index
    n_on: int
    n_off: int
    fed_at: float = field(default_factory=time.time)


class Feeder:
    def __init__(
        self,
        examples: list[Example],
        tokenizer: Any,
        cfg: Config,
        objective: Objective,
        prompts: Publisher,
        rollouts: Publisher,
    ):
        self.examples, self.tokenizer, self.cfg = examples, tokenizer, cfg
        self.prompts, self.rollouts = prompts, rollouts
        self.cursor = Cursor()
        self.inflight: dict[str, FedTask] = {}
        self.fed_total = 0
        self._order: tuple[int, np.ndarray] | None = None
        algo = cfg.algorithm
        self.n_on = algo.n_on
        self.n_off = algo.n_off if objective.uses_traces else 0
        self.capacity = (algo.max_off_policy_steps + 1) * cfg.learner.batch_prompts
        self.step = 0  # the learner's training step: the scheduled prefix strategies follow it

    # ---------------------------------------------------------------- cursor

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.cfg.run.seed, epoch])
            self._order = (epoch, rng.permutation(len(self.examples)))
        return self._order[1]

    def _advance(self) -> tuple[str, int]:
        """The next (task id, example index) of the cursor; a new epoch starts a new order."""
        if self.cursor.position >= len(self.examples):
            self.cursor = Cursor(self.cursor.epoch + 1, 0)
        index = int(self._permutation(self.cursor.epoch)[self.cursor.position])
        task_id = f"e{self.cursor.epoch}-{self.cursor.position}"
        self.cursor.position += 1
        return task_id, index

    def next_example(self) -> Example:
        """The cursor's next example, taken without feeding a task (SFT trains on traces
        straight from the data); the cursor moves as if it had been fed."""
        return self.examples[self._advance()[1]]

    # ---------------------------------------------------------------- feeding

    def room(self) -> int:
        return max(0, self.capacity - len(self.inflight))

    def top_up(self, limit: int | None = None) -> int:
        """Feed tasks until the in-flight cap (or ``limit`` new tasks); returns how many."""
        count = min(self.room(), limit if limit is not None else self.room())
        tasks, traces = [], []
        for _ in range(count):
            task_id, index = self._advance()
            fed, task, trace = self._make(task_id, index)
            self.inflight[task_id] = fed
            tasks.append((task_id, encode_task(task)))
            traces += trace
        if traces:  # traces first: a group's samples can only complete once they are scored
            self.rollouts.publish(traces)
        if tasks:
            self.prompts.publish(tasks)
        self.fed_total += len(tasks)
        return len(tasks)

    def refeed(self) -> int:
        """Publish every in-flight task again, same ids (after Redis lost the run's state, the
        tasks of a restored checkpoint exist nowhere else); returns how many."""
        tasks, traces = [], []
        for fed in self.inflight.values():
            _, task, trace = self._make(fed.task_id, fed.index)
            tasks.append((fed.task_id, encode_task(task)))
            traces += trace
        if traces:
            self.rollouts.publish(traces)
        if tasks:
            self.prompts.publish(tasks)
        return len(tasks)

    def tokens(self, ex: Example) -> tuple[list[int], list[int], str]:
        """(prompt ids, trace ids, trace text) of ``ex`` as LUFFY builds them: the trace loses
        a ``<think>\n`` the prompt already ends with and is cut to ``max_prefix_len`` tokens
        (``learner.prompts.trace_ids``); the text is what the verifier scores, decoded from
        the ids when the cut removed anything."""
        text = prompt_text(self.tokenizer, ex.prompt, self.cfg.model.template)
        prompt = text_ids(self.tokenizer, text)
        if ex.target is None:
            return prompt, [], ""
        limit = self.cfg.algorithm.max_prefix_len
        trace = trace_ids(self.tokenizer, ex.target, text, limit)
        words = trace_text(ex.target, text)
        if trace[-1:] != [self.tokenizer.eos_token_id]:  # cut: score what the policy is shown
            words = self.tokenizer.decode(trace, skip_special_tokens=True)
        return prompt, trace, words

    def _make(self, task_id: str, index: int) -> tuple[FedTask, Task, list]:
        ex = self.examples[index]
        ids, trace, words = self.tokens(ex)
        gen = self.cfg.generator
        sampling = Sampling(
            gen.temperature,
            gen.top_p,
            gen.max_new_tokens,
            seed=random.Random(task_id).randrange(1 << 31),
        )
        with_trace = (
            ex.target is not None
            and self.n_off > 0
            and (
                random.Random(f"{self.cfg.run.seed}/{task_id}").random()
                < self.cfg.algorithm.target_prob
            )
        )
        n_off = self.n_off if with_trace else 0
        prefixes, whole = self._prefixes(task_id, trace, n_off)
        task = Task(
            task_id,
            ex.id,
            ids,
            self.n_on,
            sampling,
            ex.answer,
            0,
            ex.data_source,
            time.time(),
            prefixes=prefixes,
        )
        first = self.n_on + len(prefixes)  # the generator numbers its prefix samples before
        traces = [self._trace(task, ex, trace, words, j, first + j) for j in range(whole)]
        return FedTask(task_id, index, self.n_on, n_off), task, traces

    def _prefixes(self, task_id: str, trace: list[int], n_off: int) -> tuple[list[list[int]], int]:
        """(prefixes for the generator to continue, number of whole-trace samples) of a group's
        ``n_off`` trace samples (``learner.prefixes``). A prefix as long as the trace, or as
        the response budget, is the whole trace: nothing is left for the policy to write."""
        rng = random.Random(f"{self.cfg.run.seed}/{task_id}/prefix")
        ratios = prefix_ratios(self.cfg.algorithm, n_off, self.step, rng)
        budget = self.cfg.generator.max_new_tokens
        prefixes, whole = [], 0
        for ratio in ratios:
            k = prefix_tokens(len(trace), ratio)
            if k >= len(trace) or k >= budget:
                whole += 1
            else:
                prefixes.append(trace[:k])
        return prefixes, whole

    def _trace(
        self, task: Task, ex: Example, completion: list[int], text: str, j: int, sample: int
    ) -> tuple[str, bytes]:
        rollout = Rollout(
            rollout_id=f"{task.task_id}/off{j}",
            task_id=task.task_id,
            sample=sample,
            prompt_ids=task.prompt_ids,
            completion_ids=completion,
            logprobs=[0.0] * len(completion),
            text=text,
            gold=ex.answer,
            policy_version=0,
            finish_reason="stop",
            generator_id="trace",
            off_policy=True,
            data_source=ex.data_source,
        )
        return rollout.rollout_id, encode_rollout(rollout)

    def resolve(self, task_id: str) -> FedTask | None:
        """The task's group was trained or dropped: it leaves the in-flight set."""
        return self.inflight.pop(task_id, None)

    def expected(self, task_id: str) -> tuple[int, int]:
        fed = self.inflight.get(task_id)
        return (fed.n_on, fed.n_off) if fed else (self.n_on, self.n_off)

    def overdue(self, timeout_s: float) -> list[FedTask]:
        """In-flight tasks fed longer ago than ``timeout_s`` (their samples never all came)."""
        limit = time.time() - timeout_s
        return [fed for fed in self.inflight.values() if fed.fed_at < limit]

    # ---------------------------------------------------------------- checkpoint

    def state(self) -> dict[str, Any]:
        return {
            "cursor": asdict(self.cursor),
            "fed_total": self.fed_total,
            "inflight": [asdict(f) for f in self.inflight.values()],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.cursor = Cursor(**state["cursor"])
        self.fed_total = int(state.get("fed_total", 0))
        now = time.time()  # restart the in-flight clocks: the wait starts again now
        self.inflight = {f["task_id"]: FedTask(**{**f, "fed_at": now}) for f in state["inflight"]}


__all__ = ["Cursor", "FedTask", "Feeder"]
