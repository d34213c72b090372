"""The learner's work loop (rank 0 of the learner's torchrun group), inside the process shell
(``common.shell``: work loop, REST app, heartbeat).

Parts and ownership:
- ``LearnerWorker`` (main thread) owns the loop and the policy version it trains: feed tasks
  (``Feeder``), collect scored samples into groups (``GroupAssembler``), train a step when
  ``batch_prompts`` groups are complete (``Ranks``: every rank's ``Trainer`` together), push
  weights every ``sync.every`` steps (``WeightBroadcaster``; ``policy_version`` moves only
  after a successful push), evaluate (``EvalRounds``) and write checkpoints.
- ``Bookkeeping`` owns the accounts: every task trained, dropped stale, dropped incomplete, or
  lost; the ledger per checkpoint; which scored entries are acked (only once a checkpoint
  includes their training, so a restart trains them again instead of losing them; the learner
  reads its own unacked entries back at start).
- ``LearnerTelemetry`` owns metrics, metrics.jsonl and the /status JSON.
- ``Objective`` (built once from ``[algorithm]``) decides what is fed and trained.
- Controls: ``checkpoint`` (now), plus the shell's ``pause`` / ``resume``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from common.net import advertised_host
from common.schemas import ScoredRollout, decode_scored
from common.shell import FatalError, ServiceContext
from common.shell.preflight import check_gpu_request, check_model_folder
from common.transport import (
    STREAM_GROUPS,
    Delivery,
    RunStateLost,
    StreamConsumer,
    StreamPublisher,
    stream_depths,
    trim_acked,
)
from common.transport.marker import RunMarker
from common.transport.weight_sync import SyncBoard
from learner.batch import GroupAssembler, TrainBatch, build_batch, trace_sample
from learner.bookkeeping import Bookkeeping
from learner.broadcast import WeightBroadcaster
from learner.checkpoint import list_checkpoints
from learner.checkpointing import Checkpointing
from learner.collective import Ranks
from learner.evaluation import EvalRounds
from learner.feeder import Feeder
from learner.objective import make_objective
from learner.startup import (
    eval_rounds,
    generator_versions,
    load_training_data,
    refuse_to_start_over,
    state_lost,
    total_steps,
)
from learner.telemetry import LearnerTelemetry
from learner.tracking import Trackers, check_trackers, make_trackers
from learner.train import Trainer

log = logging.getLogger(__name__)
LEARNER_CONSUMER = "learner"
# Trim often: a stream then holds about TRIM_EVERY_S of production plus what is not yet acked
# (scored entries wait for a checkpoint), whatever the throughput. At 30 s the soak test saw
# stream peaks track the stack's speed (6k -> 9k scored entries as the VM sped up).
TRIM_EVERY_S = 2.0
QUEUES_EVERY_S = 1.0
NEWCOMERS_EVERY_S = 2.0  # how often an idle learner looks for generators outside the epoch


class LearnerWorker:
    def __init__(self) -> None:
        self.ranks: Ranks | None = None
        self.version = 0
        self._checkpoint_requested = threading.Event()
        self._final_eval_started = False
        self._next_queues = 0.0
        self._next_trim = 0.0
        self._next_newcomers = 0.0

    # ---------------------------------------------------------------- setup

    def setup(self, ctx: ServiceContext) -> None:
        from transformers import AutoTokenizer

        self.ctx, cfg = ctx, ctx.config
        self.started = time.monotonic()
        self.cfg, self.lc, self.algo = cfg, cfg.learner, cfg.algorithm
        self.objective = make_objective(cfg.algorithm)
        check_gpu_request(cfg.sync.backend)
        check_model_folder(cfg.model.path)
        check_trackers(cfg.tracking)
        self.examples, self.bad_rows = load_training_data(self.lc, self.objective)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        self.ranks = Ranks(Trainer(cfg, self.objective))
        self.total_steps = total_steps(self.lc, self.objective, self.examples)
        self.ranks.plan_steps(self.total_steps)
        self.checkpoints = Checkpointing(
            self.ranks,
            str(cfg.run.run_dir / "checkpoints"),
            cfg.learner.keep_last,
            cfg.learner.export_hf,
        )
        self.ckpt_root = str(cfg.run.run_dir / "checkpoints")
        self.board = SyncBoard(ctx.redis, ctx.keys)
        self.marker = RunMarker(ctx.redis, ctx.keys)
        self.broadcaster = WeightBroadcaster(
            self.board,
            cfg.sync,
            heartbeat_s=cfg.redis.heartbeat_interval_s,
            address=advertised_host(cfg.sync.host, cfg.sync.advertise_host, cfg.redis.url),
        )
        self.consumer = StreamConsumer(
            ctx.redis,
            ctx.keys,
            "scored",
            LEARNER_CONSUMER,
            cfg.redis,
            decode=decode_scored,
            reclaim=False,  # the sole consumer: it reads its own pending entries back at start
        )
        self.feeder = Feeder(
            self.examples,
            self.tokenizer,
            cfg,
            self.objective,
            StreamPublisher(ctx.redis, ctx.keys, "prompts"),
            StreamPublisher(ctx.redis, ctx.keys, "rollouts"),
        )
        self.assembler = GroupAssembler(cfg.learner.group_timeout_s)
        self.books = Bookkeeping(self.consumer, cfg.run.run_dir / "ledger")
        self.evals = eval_rounds(
            cfg, self.tokenizer, StreamPublisher(ctx.redis, ctx.keys, "prompts")
        )
        self.telemetry = LearnerTelemetry(
            ctx.metrics,
            cfg.run.run_dir / "metrics.jsonl",
            lambda: self.version,
            self.feeder,
            self.assembler,
            self.books,
            self.consumer,
        )
        self._restore()
        if self.evals and self.ranks.step % self.lc.eval_every == 0:
            self.evals.start(self.ranks.step)
        for delivery in self.consumer.fetch_own_pending():
            self._accept(delivery)
        # last: a start refused above leaves no tracker run open (close() runs only after a
        # finished setup), and no row has been written yet
        self.telemetry.trackers = Trackers(make_trackers(cfg))
        log.info(
            "learner ready: %d examples (%d bad rows skipped), step %d, version %d",
            len(self.examples),
            self.bad_rows.count,
            self.ranks.step,
            self.version,
        )

    def _restore(self) -> None:
        """Resume from the newest checkpoint if asked; versions never go backwards (not even
        when Redis lost the policy version: the generators' own versions count too)."""
        fresh_state = self.marker.claim()
        self.consumer.incarnation = self.marker.value
        current = max(self.board.policy_version(), generator_versions(self.ctx))
        checkpoints = list_checkpoints(self.ckpt_root)
        if not self.lc.resume:
            refuse_to_start_over(self.ctx, self.ckpt_root, checkpoints)
        if self.lc.resume and checkpoints:
            meta = self.ranks.load(checkpoints[-1])
            self.feeder.load_state(meta["feeder"])
            self.books.restore(meta, self.ranks.step)
            self.version = int(meta.get("version", 0))
            self.checkpoints.step = self.ranks.step
            log.info("resumed from %s (step %d)", checkpoints[-1], self.ranks.step)
            if fresh_state:  # Redis holds nothing of the run: its tasks exist only here now
                refed = self.feeder.refeed()
                log.warning(
                    "Redis held no state of this run: fed its %d in-flight tasks again", refed
                )
        elif self.lc.resume:
            log.warning("learner.resume is set but %s holds no checkpoint", self.ckpt_root)
        if self.lc.resume or current > self.version:
            # generators may hold newer weights than ours: push ours under a new version
            self.version = max(self.version, current)
            self._sync()

    def close(self) -> None:
        try:
            if self.ranks is not None:
                if self.checkpoints.behind:  # leave a checkpoint to resume from
                    try:
                        self._checkpoint()
                    except FatalError as exc:
                        log.error("learner stops: %s", exc)
                self.ranks.stop()
        finally:
            self.telemetry.close()

    # ---------------------------------------------------------------- loop

    def _done(self) -> bool:
        if self.ranks.step >= self.total_steps:
            return True
        limit = self.lc.max_minutes
        return limit is not None and time.monotonic() - self.started > limit * 60

    def step(self) -> bool:
        try:
            lost = self.marker.lost()
            if lost:
                raise RunStateLost(lost)
            return self._step()
        except RunStateLost as exc:
            raise state_lost(str(exc), self.checkpoints.newest()) from None

    def _step(self) -> bool:
        if self._done():
            return self._finish()
        if self._checkpoint_requested.is_set():
            self._checkpoint_requested.clear()
            self._checkpoint()
        if not self.objective.generates:
            self._train(self._trace_batch())
            return True
        self.feeder.step = self.ranks.step
        self.feeder.top_up()
        want = self.lc.batch_prompts
        block = 0 if len(self.assembler.ready) >= want else min(self.cfg.redis.block_ms, 200)
        self._receive(block)
        self._expire()
        if len(self.assembler.ready) < want:
            self._bring_in_newcomers()
            return False
        groups = self.assembler.take(want)
        batch, stale = build_batch(groups, self.version, self.algo)
        for group in stale:
            self._resolve(group.task_id, "stale")
        if batch.samples:
            self._train(batch, [g.task_id for g in groups if g not in stale])
        return True

    def _finish(self) -> bool:
        """After the last step: evaluate the final weights (bounded wait), then stop."""
        step = self.ranks.step
        if self.evals and not self._final_eval_started:
            self._final_eval_started = True
            if step not in self.evals.rounds and self.telemetry.last_eval.get("step") != step:
                self.evals.start(step)
        if self.evals and self.evals.rounds:
            self._receive(200)
            return True
        log.info(
            "training done at step %d (planned steps %d, max_minutes %s)",
            step,
            self.total_steps,
            self.lc.max_minutes,
        )
        self.ctx.stop.set()
        return False

    def _bring_in_newcomers(self) -> None:
        """While waiting for groups: a generator outside the epoch (back from a hang, or new)
        takes no tasks until a push brings it in, so push now rather than at the next step
        (which may never come if it is the only one). Version 0 needs none: every generator
        starts from those weights."""
        now = time.monotonic()
        if self.version == 0 or now < self._next_newcomers:
            return
        self._next_newcomers = now + NEWCOMERS_EVERY_S
        newcomers = self.broadcaster.newcomers()
        if newcomers:
            log.info("bringing %s into weight sync (version %d)", newcomers, self.version + 1)
            self._sync()

    def _maintain_streams(self) -> None:
        """Keep the streams bounded for everyone (trim below what all groups acked) and read
        their depths for the metrics, each on its own clock."""
        now = time.monotonic()
        if now >= self._next_trim:
            self._next_trim = now + TRIM_EVERY_S
            for name in STREAM_GROUPS:
                self.telemetry.trimmed += trim_acked(self.ctx.redis, self.ctx.keys, name)
        if now >= self._next_queues:
            self._next_queues = now + QUEUES_EVERY_S
            self.telemetry.queue_depths(stream_depths(self.ctx.redis, self.ctx.keys))

    def _receive(self, block_ms: int) -> None:
        self._maintain_streams()
        for delivery in self.consumer.fetch(block_ms=block_ms):
            self._accept(delivery)
        if self.evals:
            for result in self.evals.finished(self.lc.group_timeout_s):
                self.telemetry.evaluation(result, self.lc.eval_samples)

    def _accept(self, delivery: Delivery[ScoredRollout]) -> None:
        task_id = delivery.value.rollout.task_id
        if self.evals is not None and EvalRounds.is_eval(task_id):
            self.evals.add(delivery.value)
            self.consumer.commit([(delivery, [])])  # evaluation never trains: ack at once
            return
        if self.books.hold(delivery):
            self.assembler.duplicates += 1
            return
        self.assembler.add(delivery.value, self.feeder.expected(task_id))

    def _expire(self) -> None:
        for group in self.assembler.expire():
            self._resolve(group.task_id, "incomplete")
        waiting = self._held_tasks()
        for fed in self.feeder.overdue(self.lc.group_timeout_s):
            if fed.task_id not in waiting:
                self._resolve(fed.task_id, "lost")

    def _held_tasks(self) -> set[str]:
        """Tasks whose groups are still in the assembler (collecting, or complete)."""
        return set(self.assembler.pending) | {g.task_id for g in self.assembler.ready}

    def _resolve(self, task_id: str, outcome: str) -> None:
        self.feeder.resolve(task_id)
        self.books.resolve(task_id, outcome)

    def _train(self, batch: TrainBatch, task_ids: list[str] = ()) -> None:
        result = self.ranks.train_step(batch)
        self.telemetry.step(result, batch)
        for task_id in task_ids:
            self._resolve(task_id, "trained")
        step = result.step
        if step % self.cfg.sync.every == 0:
            self._sync()
        if self.lc.checkpoint_every and step % self.lc.checkpoint_every == 0:
            self._checkpoint()
        elif not self.lc.checkpoint_every:
            self.books.ack(self._held_tasks())
        if self.evals and (step % self.lc.eval_every == 0 or self._done()):
            self.evals.start(step)  # after the sync: it measures the weights just trained

    def _trace_batch(self) -> TrainBatch:
        """An objective that samples nothing (SFT) trains on traces straight from the data."""
        samples = []
        while len(samples) < self.lc.batch_prompts:
            ex = self.feeder.next_example()
            if ex.target is not None:
                prompt, trace, _ = self.feeder.tokens(ex)
                samples.append(trace_sample(prompt, trace))
        return TrainBatch(samples, len(samples), {"reward_mean": 1.0, "reward_off_mean": 1.0})

    # ---------------------------------------------------------------- sync and checkpoints

    def _sync(self) -> None:
        # in the dtype the generators serve, straight from the device the learner trains on
        weights = self.ranks.full_state_dict(self.cfg.model.dtype, on_device=True)
        result = self.broadcaster.push(self.version + 1, weights.items())
        self.telemetry.sync(result)
        if result.ok:
            self.version = result.version

    def _checkpoint(self) -> str | None:
        extra = {"version": self.version, "feeder": self.feeder.state(), **self.books.state()}
        path = self.checkpoints.write(extra)
        self.telemetry.checkpoint_error = self.checkpoints.error
        if path is not None:
            self.books.checkpointed(self.ranks.step)
            try:
                self.books.ack(self._held_tasks())
            except RunStateLost:  # what there was to ack went with Redis's lost state
                self.books.unacked.clear()
        return path

    # ---------------------------------------------------------------- REST

    def status(self) -> dict[str, Any]:
        ranks = self.ranks
        return self.telemetry.status(
            step=ranks.step if ranks else 0,
            max_steps=self.total_steps,
            mode=self.objective.mode,
            skipped=ranks.trainer.skipped if ranks else 0,
            bad_rows=self.bad_rows.count,
        )

    def not_ready(self) -> list[str]:
        return [] if self.ranks is not None else ["trainer not built"]

    def controls(self) -> dict:
        def checkpoint() -> dict[str, Any]:
            self._checkpoint_requested.set()  # written by the loop, between steps
            return {"checkpoint": "requested", "step": self.ranks.step}

        return {"checkpoint": checkpoint}

    def member_info(self) -> dict[str, Any]:
        return {"step": self.ranks.step if self.ranks else 0, "policy_version": self.version}

    def routes(self, app: Any, ctx: ServiceContext) -> None:
        pass


__all__ = ["LearnerWorker"]
