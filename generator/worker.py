"""The generator's work: ``prompts`` -> n samples with behaviour log-probs -> ``rollouts``.

Runs inside the process shell (``common.shell``: work loop, REST app, heartbeat).

Parts and ownership:
- ``GeneratorWorker`` (the process's main thread) owns the engine and the stream consumer.
  Each ``step`` first lets ``SyncClient`` join a new weight-sync epoch or load a pushed
  version, then generates as ``generator.scheduling`` says:
  - ``continuous``: ``ContinuousScheduler`` (``generator.continuous``) keeps the engine full,
    one engine step per worker step; a push is loaded between two engine steps with the
    sequences in flight kept (their later tokens are the new version's: ``version_starts``);
  - ``batch``: up to ``max_batch_tasks`` tasks per engine call, a sync only between calls (no
    rollout mixes versions).
  Either way a task's rollouts are committed together with its ack (atomic; a task whose
  process dies mid-generation stays pending and another replica reclaims it).
- ``SyncClient`` (``generator.sync_client``) owns this generator's view of the weight sync.
  While it is behind the learner by more than the run accepts (dropped from an epoch while
  hung, or a failed load), the worker takes no tasks and ``/readyz`` says why.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import replace
from typing import Any

from common.schemas import Rollout, Task, decode_task, encode_rollout
from common.shell import ServiceContext
from common.shell.preflight import check_gpu_request, check_model_folder
from common.transport import Delivery, Output, RunStateLost, StreamConsumer
from common.transport.marker import RunMarker
from common.transport.weight_sync import SyncBoard
from generator.continuous import ContinuousScheduler, Occupancy
from generator.engines import Completion, Engine, GenRequest, make_engine
from generator.sync_client import SyncClient

log = logging.getLogger(__name__)
_RATE_WINDOW_S = 30.0
# While sequences are in flight, Redis is asked for a push or new tasks at most this often
# instead of at every engine step (a few ms on a small model): each ask is a round trip
# (~0.45 ms; polled at every 13 ms step it cost 3% of the tiny model's uniform workload). A
# push waits at most this much longer, against a learner step of 0.2 s or more
_BUSY_POLL_S = 0.02
_BEHIND_POLL_S = 0.005  # behind while a push is on its way (see _behind_wait_s)


class GeneratorWorker:
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.inflight = 0
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) for tokens/s

    # ---------------------------------------------------------------- lifecycle

    def setup(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.gen = cfg.generator
        check_gpu_request(cfg.sync.backend)
        check_model_folder(cfg.model.path)
        self.engine = make_engine(cfg, seed=cfg.run.seed)
        self.scheduler = (
            ContinuousScheduler(self.engine, self.gen.max_inflight_sequences)
            if self.gen.scheduling == "continuous"
            else None
        )
        self._task_size = 0  # sequences per task, learnt from the first one admitted
        self._next_poll = self._next_fetch = 0.0
        self.occupancy = self.scheduler.occupancy if self.scheduler else Occupancy()
        self.marker = RunMarker(ctx.redis, ctx.keys)
        self.lost_batches = 0  # batches dropped because Redis lost the run's state
        self.consumer = StreamConsumer(
            ctx.redis,
            ctx.keys,
            "prompts",
            ctx.member_id,
            cfg.redis,
            decode=decode_task,
            precheck_seen=True,  # generation is expensive: skip tasks already done
        )
        self.sync = SyncClient(
            SyncBoard(ctx.redis, ctx.keys),
            self.engine,
            ctx.member_id,
            max_lag=cfg.algorithm.max_off_policy_steps,
        )
        self._metrics(ctx)

    def _metrics(self, ctx: ServiceContext) -> None:
        m, stats, sync = ctx.metrics, self.consumer.stats, None
        self.tokens = m.counter("tokens_generated_total", "Completion tokens generated")
        self.rollouts = m.counter("rollouts_total", "Rollouts published")
        self.tasks = m.counter("tasks_total", "Tasks completed")
        self.gen_seconds = m.histogram(
            "generate_seconds", "Engine time per batch of tasks (batch) or per task (continuous)"
        )
        # busy time, for idle fractions: per-task times overlap in continuous mode
        self.engine_seconds = m.counter(
            "engine_busy_seconds_total", "Seconds in engine steps (continuous) or calls (batch)"
        )
        self.sync_seconds = m.histogram("sync_seconds", "Time to receive and load a weight push")
        sync = self.sync
        m.gauge_fn("policy_version", "Policy version now served", lambda: sync.version)
        m.gauge_fn(
            "version_lag_steps",
            "Latest pushed version minus the served one",
            lambda: sync.latest_version - sync.version,
        )
        m.counter_fn("syncs_total", "Weight syncs, by result", lambda: dict(sync.syncs))
        m.gauge_fn("inflight_count", "Tasks being generated", lambda: self.inflight)
        m.gauge_fn(
            "engine_occupancy_ratio",
            "Sequences running per decode step / the capacity, since start",
            lambda: self.occupancy.share(),
        )
        m.counter_fn(
            "deadletter_total",
            "Tasks sent to deadletter, by reason",
            lambda: dict(stats.deadletter_reasons),
        )
        m.counter_fn("duplicates_total", "Re-delivered tasks skipped", lambda: stats.duplicates)
        m.counter_fn(
            "reclaimed_total", "Tasks reclaimed from dead replicas", lambda: stats.reclaimed
        )

    def member_info(self) -> dict[str, Any]:
        return {
            "sync_ranks": self.engine.sync_ranks() if self.engine else 0,
            "engine": self.gen.engine,
            "policy_version": self.sync.version,
            "sync_epoch": self.sync.epoch or 0,
        }

    def close(self) -> None:
        if self.engine:
            self.engine.close()

    # ---------------------------------------------------------------- work loop

    def step(self) -> bool:
        now = time.monotonic()
        busy = bool(self.scheduler and self.scheduler.tasks)
        loaded = None
        if not busy or now >= self._next_poll:
            self._next_poll = now + _BUSY_POLL_S
            loaded = self.sync.poll()
        if loaded is not None:
            self.sync_seconds.observe(loaded)
        # stale weights never sample, and nothing is read while Redis lost the run's state
        if self.sync.behind() or self.marker.lost():
            if self.scheduler and self.marker.lost():
                self._drop_inflight("Redis lost the run's state")
            self._next_poll = 0.0  # behind: the next iteration polls, busy or not
            self.ctx.stop.wait(self._behind_wait_s())
            return loaded is not None
        self.consumer.incarnation = self.marker.value
        try:
            if self.scheduler:
                return self._continue(loaded is not None)
            return self._generate(loaded is not None)
        except RunStateLost as exc:  # the tasks read belong to a state that is gone
            self._drop_inflight(str(exc))
            return True

    def _behind_wait_s(self) -> float:
        """A member of the current epoch is behind between the learner's new version and its
        push, which follows at once: look again soon (at the idle period this could stall the
        engine up to 50 ms per push, against a tiny-stack step of ~0.3 s). Left out of the epoch, it
        waits to rejoin at the idle period."""
        if self.sync.joined and not self.marker.lost():
            return min(self.gen.sync_poll_ms / 1000, _BEHIND_POLL_S)
        return self.gen.sync_poll_ms / 1000

    def _drop_inflight(self, why: str) -> None:
        dropped = self.scheduler.abort_all() if self.scheduler else self.inflight
        if dropped:
            self.lost_batches += 1
            log.warning("dropping the %d task(s) in flight: %s", dropped, why)
        self.inflight = 0

    def _continue(self, loaded: bool) -> bool:
        """One engine step of continuous scheduling: admit what fits, step, publish what
        finished."""
        sched, now = self.scheduler, time.monotonic()
        room = sched.room(self._task_size) if self._task_size else int(not sched.tasks)
        if room and (not sched.tasks or now >= self._next_fetch):
            self._next_fetch = now + _BUSY_POLL_S
            block = 0 if sched.tasks else min(self.ctx.config.redis.block_ms, self.gen.sync_poll_ms)
            for delivery in self.consumer.fetch(count=room, block_ms=block):
                if self._admissible(delivery):
                    plan = self._requests(delivery.value)
                    self._task_size = max(1, sum(req.n for req, _ in plan))
                    sched.admit(delivery, plan)
        stepped = time.perf_counter()
        finished = sched.step()
        self.engine_seconds.inc(time.perf_counter() - stepped)
        if finished:
            now = time.perf_counter()
            for state in finished:
                self.gen_seconds.observe(now - state.started)
            self._publish(
                [f.delivery for f in finished],
                [f.samples() for f in finished],
                [now - f.started for f in finished],
            )
        self.inflight = len(sched.tasks)
        return bool(sched.tasks or finished) or loaded

    def _generate(self, loaded: bool) -> bool:
        block = min(self.ctx.config.redis.block_ms, self.gen.sync_poll_ms)
        batch = self.consumer.fetch(count=self.gen.max_batch_tasks, block_ms=block)
        tasks = [d for d in batch if self._admissible(d)]
        if not tasks:
            return bool(batch) or loaded
        self.inflight = len(tasks)
        started = time.perf_counter()
        plans = [self._requests(d.value) for d in tasks]
        flat = self.engine.generate([req for plan in plans for req, _ in plan])
        samples, at = [], 0
        for plan in plans:  # back to one list per task: its n samples, then its prefix samples
            per_task = []
            for _, prefix in plan:
                per_task += [(prefix, c) for c in flat[at]]
                at += 1
            samples.append(per_task)
        elapsed = time.perf_counter() - started
        self.gen_seconds.observe(elapsed)
        self.engine_seconds.inc(elapsed)
        capacity = self.gen.max_batch_tasks * max(len(t) for t in samples)
        lengths = [len(c.completion_ids) for task in samples for _, c in task]
        self.occupancy.add_batch(lengths, capacity)
        self._publish(tasks, samples, [elapsed] * len(tasks))
        self.inflight = 0
        return True

    def _admissible(self, delivery: Delivery[Task]) -> bool:
        """Tasks no engine call could serve go to deadletter with the reason."""
        task, engine = delivery.value, self.engine
        reason = ""
        if int(task.prompt_ids.max()) >= engine.vocab_size:
            reason = (
                f"token id {int(task.prompt_ids.max())} out of vocabulary ({engine.vocab_size})"
            )
        elif len(task.prompt_ids) >= engine.max_model_len:
            reason = (
                f"prompt of {len(task.prompt_ids)} tokens >= max_model_len {engine.max_model_len}"
            )
        if reason:
            fields = {b"k": delivery.key.encode(), b"d": delivery.payload}
            self.consumer.deadletter(delivery.entry_id, fields, f"task {task.task_id}: {reason}")
        return not reason

    def _requests(self, task: Task) -> list[tuple[GenRequest, list[int]]]:
        """The task's engine requests with the trace prefix each continues: its ``n`` samples
        from the prompt, then one continuation per prefix (LUFFY's partial prefixes: the
        policy continues prompt + prefix; the prefix counts against ``max_new_tokens``). A
        prefix the context cannot hold with one more token is cut to fit."""
        prompt = task.prompt_ids.tolist()
        room = self.engine.max_model_len - len(prompt)
        sampling = replace(task.sampling, max_new_tokens=min(task.sampling.max_new_tokens, room))
        plan = [(GenRequest(prompt, task.n, sampling), [])] if task.n else []
        seed = task.sampling.seed
        for j, raw in enumerate(task.prefixes):
            prefix = raw.tolist()[: max(0, min(room, sampling.max_new_tokens) - 1)]
            left = sampling.max_new_tokens - len(prefix)
            seeded = None if seed is None else (seed + 7919 * (j + 1)) % (1 << 31)
            cont = replace(sampling, max_new_tokens=left, seed=seeded)
            plan.append((GenRequest(prompt + prefix, 1, cont), prefix))
        return plan

    def _publish(self, tasks: list[Delivery[Task]], samples: list, elapsed: list[float]) -> None:
        now, batch, tokens = time.time(), [], 0
        for delivery, task_samples, took in zip(tasks, samples, elapsed, strict=True):
            task = delivery.value
            outputs = []
            for i, (prefix, s) in enumerate(task_samples):
                completion, logprobs, text = s.completion_ids, s.logprobs, s.text
                if prefix:  # the trace prefix is part of the response, off-policy (log-prob 0)
                    completion = [*prefix, *completion]
                    logprobs = [0.0] * len(prefix) + list(logprobs)
                    text = self.engine.tokenizer.decode(completion, skip_special_tokens=True)
                starts = self._version_starts(s, len(prefix))
                versions = [v for _, v in starts] or [self.sync.version]
                rollout = Rollout(
                    rollout_id=f"{task.task_id}/{i}",
                    task_id=task.task_id,
                    sample=i,
                    prompt_ids=task.prompt_ids,
                    completion_ids=completion,
                    logprobs=logprobs,
                    text=text,
                    gold=task.gold,
                    policy_version=min(versions),
                    version_max=max(versions),
                    finish_reason=s.finish_reason,
                    generator_id=self.ctx.member_id,
                    off_policy=bool(prefix),
                    prefix_len=len(prefix),
                    data_source=task.data_source,
                    timings={"generate_s": took, "queue_s": max(0.0, now - task.created)},
                    version_starts=starts if len(starts) > 1 else [],
                )
                outputs.append(Output("rollouts", rollout.rollout_id, encode_rollout(rollout)))
                tokens += len(s.completion_ids)  # generated ones (prefixes are not)
            batch.append((delivery, outputs))
        written = self.consumer.commit(batch)
        fresh = [outs for (_, outs), new in zip(batch, written, strict=True) if new]
        self.tasks.inc(len(fresh))
        self.rollouts.inc(sum(len(outs) for outs in fresh))
        self.tokens.inc(tokens)
        self._recent.append((time.monotonic(), tokens))

    def _version_starts(self, sample: Completion, offset: int) -> list[tuple[int, int]]:
        """(start, version) per span of the sample's generated tokens, as indexes into the
        completion (after a trace prefix of ``offset`` tokens); [] when unlabelled."""
        spans = [(offset + start, version) for version, start, _ in sample.versions]
        return [p for i, p in enumerate(spans) if i == 0 or p[1] != spans[i - 1][1]]

    # ---------------------------------------------------------------- REST

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - _RATE_WINDOW_S:
            self._recent.popleft()
        if not self._recent:
            return 0.0
        span = max(now - self._recent[0][0], 1.0)
        return sum(t for _, t in self._recent) / span

    def status(self) -> dict[str, Any]:
        stats, sync = self.consumer.stats, self.sync
        return {
            "engine": self.gen.engine,
            "scheduling": self.gen.scheduling,
            "engine_load": {
                "occupancy": round(self.occupancy.share(), 4),
                "running_steps": self.occupancy.running,
                "capacity_steps": self.occupancy.capacity,
            },
            **({"continuous": self.scheduler.status()} if self.scheduler else {}),
            "policy_version": sync.version,
            "latest_pushed_version": sync.latest_version,
            "tokens_per_s": round(self.tokens_per_second(), 1),
            "inflight": self.inflight,
            "sync": sync.status(),
            "counters": {
                "tasks": self.tasks._value.get(),
                "rollouts": self.rollouts._value.get(),
                "tokens": self.tokens._value.get(),
                "duplicates": stats.duplicates,
                "deadlettered": stats.deadlettered,
                "reclaimed": stats.reclaimed,
                "batches_dropped_state_lost": self.lost_batches,
            },
            "run_state": self.marker.reason or "ok",
        }

    def not_ready(self) -> list[str]:
        if self.engine is None:
            return ["engine not loaded"]
        lost = self.marker.reason and f"{self.marker.reason}; waiting for the learner to rebuild it"
        return [why for why in (self.sync.behind(), lost) if why]

    def controls(self) -> dict:
        return {}

    def routes(self, app: Any, ctx: ServiceContext) -> None:
        pass


__all__ = ["GeneratorWorker", "SyncClient"]
