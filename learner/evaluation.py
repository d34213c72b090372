"""Held-out evaluation during training, through the same generators and verifiers.

``EvalRounds`` owns the open rounds: each round feeds ``eval_prompts`` held-out prompts as
tasks (no traces, evaluation sampling), collects their scored
samples, and closes when every prompt has all its samples (or the round times out) with
avg@k and pass@k (``avg_and_pass``, which ``luffy eval`` uses too).
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.config import Config
from common.schemas import Sampling, ScoredRollout, Task, encode_task
from common.transport import Publisher
from learner.data import Example
from learner.prompts import prompt_text, text_ids, trace_ids

PREFIX = "eval"


def avg_and_pass(per_prompt: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(avg@k, pass@k) of prompts' sample rewards: the mean reward over every sample, and the
    share of prompts with at least one correct sample (a prompt without samples counts as
    failed). [[1, 0], [0, 0], []] -> (0.25, 1/3)."""
    rewards = [r for rs in per_prompt for r in rs]
    avg = sum(rewards) / len(rewards) if rewards else 0.0
    passed = sum(any(r > 0 for r in rs) for rs in per_prompt) / max(1, len(per_prompt))
    return avg, passed


def eval_seed(step: int, index: int) -> int:
    """The sampling seed of held-out prompt ``index`` in the round of ``step``: its own per
    prompt. One seed for the whole round made every prompt draw the same random numbers, so
    at a temperature above 0 a round passed or failed nearly as a whole (a held-out reward of
    0.03 between 1.0 and 0.98 while the training reward stayed at 0.98; bench/README.md)."""
    return random.Random(f"eval/{step}/{index}").randrange(1 << 31)


@dataclass(frozen=True)
class Divergence:
    """Where a wrong sample first left its prompt's reference trace: the response position,
    the trace's token and the sampled one (decoded), and the probability the sampled token had
    under the evaluation's sampling (a near-tie flipped by the temperature reads ~0.3-0.5,
    noise reads ~0)."""

    pos: int
    expected: str
    got: str
    prob: float


def eval_task_id(step: int, nonce: str, index: int) -> str:
    """The id of held-out prompt ``index`` in the round of ``step`` (``parse_eval_task_id``
    reads it back)."""
    return f"{PREFIX}{step}.{nonce}-{index}"


def parse_eval_task_id(task_id: str) -> tuple[int, int]:
    """(step, prompt index) of an ``eval_task_id``."""
    step, rest = task_id[len(PREFIX) :].split(".", 1)
    return int(step), int(rest.rsplit("-", 1)[1])


def first_divergence(
    completion: Sequence[int], logprobs: Sequence[float], trace: Sequence[int], decode: Callable
) -> Divergence | None:
    """The first position where ``completion`` differs from ``trace`` (a completion that stops
    short of the trace diverges where it ends, ``got`` = "<end>"); None if it follows the trace
    to its end."""
    for pos, (got, want) in enumerate(zip(completion, trace, strict=False)):
        if got != want:
            return Divergence(
                pos, decode([int(want)]), decode([int(got)]), math.exp(float(logprobs[pos]))
            )
    if len(completion) < len(trace):
        return Divergence(len(completion), decode([int(trace[len(completion)])]), "<end>", 0.0)
    return None


@dataclass
class Round:
    step: int
    expected: dict[str, int]  # task id -> samples
    sources: dict[str, str] = field(default_factory=dict)  # task id -> data source
    rewards: dict[str, list[float]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    # what went wrong when it did (issue #18: a held-out dip is a wrong answer, a missing
    # think tag, or a response that never stopped; each calls for a different fix)
    statuses: Counter = field(default_factory=Counter)
    cut: int = 0  # responses that ran into max_new_tokens
    tokens: int = 0  # response tokens, summed
    # wrong samples by where they left the reference trace (issue #18: which step of the
    # procedure a dip breaks, and whether it was a near-tie or noise)
    divergences: list[Divergence] = field(default_factory=list)
    # the policy versions its samples were drawn with: a round spans the pushes that land
    # while it runs (a dip tied to one version, or to samples spanning a push, shows here)
    versions: tuple[int, int] | None = None

    def add(self, scored: ScoredRollout, divergence: Divergence | None = None) -> None:
        task_id = scored.rollout.task_id
        self.rewards.setdefault(task_id, []).append(scored.reward)
        self.statuses[scored.status] += 1
        self.cut += scored.rollout.finish_reason == "length"
        self.tokens += len(scored.rollout.completion_ids)
        r = scored.rollout
        low, high = r.policy_version, r.version_max
        if self.versions is not None:
            low, high = min(low, self.versions[0]), max(high, self.versions[1])
        self.versions = (low, high)
        if divergence is not None and scored.reward <= 0:
            self.divergences.append(divergence)

    def divergence_summary(self) -> dict[str, Any]:
        """The wrong samples' first departures from the trace: the three commonest
        (position, trace token, sampled token) with their count, and the mean probability of
        the departing token."""
        common = Counter((d.pos, d.expected, d.got) for d in self.divergences).most_common(3)
        probs = [d.prob for d in self.divergences]
        return {
            "wrong_vs_trace": len(self.divergences),
            "diverge_top": [[pos, want, got, n] for (pos, want, got), n in common],
            "diverge_prob_mean": round(sum(probs) / len(probs), 4) if probs else None,
        }

    def done(self) -> bool:
        return all(len(self.rewards.get(t, [])) >= n for t, n in self.expected.items())

    def result(self) -> dict[str, Any]:
        """Pooled avg@k and pass@k, and per data source the mean reward (LUFFY's
        ``val/test_score/<source>``) with their unweighted mean ``reward_by_source_mean``."""
        per_prompt = [self.rewards.get(t, []) for t in self.expected]
        avg, passed = avg_and_pass(per_prompt)
        by_source: dict[str, list[list[float]]] = {}
        for t in self.expected:
            by_source.setdefault(self.sources.get(t, "unknown"), []).append(self.rewards.get(t, []))
        source_avg = {s: avg_and_pass(rs)[0] for s, rs in sorted(by_source.items())}
        return {
            "kind": "eval",
            "step": self.step,
            "reward_mean": avg,
            "pass_at_k": passed,
            "reward_by_source": source_avg,
            "reward_by_source_mean": sum(source_avg.values()) / max(1, len(source_avg)),
            "prompts": len(per_prompt),
            "samples": sum(len(rs) for rs in per_prompt),
            "complete": self.done(),
            "status_counts": dict(sorted(self.statuses.items())),
            "truncated_share": self.cut / max(1, sum(self.statuses.values())),
            "response_len_mean": self.tokens / max(1, sum(self.statuses.values())),
            "version_min": self.versions[0] if self.versions else None,
            "version_max": self.versions[1] if self.versions else None,
            **self.divergence_summary(),
        }


class EvalRounds:
    def __init__(self, examples: list[Example], tokenizer: Any, cfg: Config, prompts: Publisher):
        lc = cfg.learner
        self.examples = examples[: lc.eval_prompts]
        self.cfg, self.prompts = cfg, prompts
        texts = [prompt_text(tokenizer, e.prompt, cfg.model.template) for e in self.examples]
        self.ids = [text_ids(tokenizer, text) for text in texts]
        # each prompt's reference trace as the feeder shows it to the policy (cut to
        # max_prefix_len), to say where a wrong sample left it
        limit = cfg.algorithm.max_prefix_len
        self.traces = [
            trace_ids(tokenizer, e.target, text, limit) if e.target is not None else []
            for e, text in zip(self.examples, texts, strict=True)
        ]
        self.decode = tokenizer.decode
        self.rounds: dict[int, Round] = {}

    @staticmethod
    def is_eval(task_id: str) -> bool:
        return task_id.startswith(PREFIX)

    def start(self, step: int) -> None:
        lc, gen = self.cfg.learner, self.cfg.generator
        tasks, expected = [], {}
        nonce = uuid.uuid4().hex[:6]  # a re-run round (after a restart) must not look done
        for i, (ex, ids) in enumerate(zip(self.examples, self.ids, strict=True)):
            task_id = eval_task_id(step, nonce, i)
            sampling = Sampling(
                lc.eval_temperature, 1.0, gen.max_new_tokens, seed=eval_seed(step, i)
            )
            task = Task(
                task_id,
                ex.id,
                ids,
                lc.eval_samples,
                sampling,
                ex.answer,
                0,
                ex.data_source,
                time.time(),
            )
            tasks.append((task_id, encode_task(task)))
            expected[task_id] = lc.eval_samples
        sources = {t: ex.data_source for (t, _), ex in zip(tasks, self.examples, strict=True)}
        self.rounds[step] = Round(step, expected, sources)
        self.prompts.publish(tasks)

    def add(self, scored: ScoredRollout) -> None:
        task_id = scored.rollout.task_id
        step, index = parse_eval_task_id(task_id)
        round_ = self.rounds.get(step)
        if round_ is not None and task_id in round_.expected:
            trace = self.traces[index]
            r, div = scored.rollout, None
            if trace and scored.reward <= 0:  # only wrong samples are summarised
                div = first_divergence(r.completion_ids, r.logprobs, trace, self.decode)
            round_.add(scored, div)

    def finished(self, timeout_s: float) -> list[dict[str, Any]]:
        """Results of rounds that completed or timed out (each reported once)."""
        now = time.monotonic()
        out = []
        for step, round_ in list(self.rounds.items()):
            if round_.done() or now - round_.started > timeout_s:
                out.append(round_.result())
                del self.rounds[step]
        return out


__all__ = ["Divergence", "EvalRounds", "avg_and_pass", "eval_seed", "first_divergence"]
