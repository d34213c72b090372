"""The learner service (rank 0 of the learner's torchrun group).

Parts and ownership:
- ``LearnerWorker`` (main thread) owns the loop: feed tasks (``Feeder``), collect scored
  samples into groups (``GroupAssembler``), train a step when ``batch_prompts`` groups are
  complete (``Trainer``, driving the other ranks), push weights every ``sync.every`` steps
  (``WeightBroadcaster``; ``policy_version`` moves only after a successful push) and write
  checkpoints. It owns the policy version it trains and the accounting of every task: trained,
  dropped stale, dropped incomplete, or lost (never sampled within the timeout).
- Scored entries are acked when the checkpoint that includes their training is written (or
  after each step when no periodic checkpoints are configured), so a restart from the last
  checkpoint trains them again instead of losing them; the learner reads its own unacked
  entries back at start (``fetch_own_pending``).
- Controls: ``checkpoint`` (now), plus the runtime's ``pause`` / ``resume``.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter
from typing import Any

from common.schemas import ScoredRollout, decode_scored
from common.shell import ServiceContext
from common.transport import (
    STREAM_GROUPS,
    Delivery,
    StreamConsumer,
    StreamPublisher,
    stale_run_refusal,
    stream_depths,
    trim_acked,
)
from common.transport.weight_sync import SyncBoard
from learner.batch import GroupAssembler, Sample, TrainBatch, build_batch
from learner.broadcast import WeightBroadcaster
from learner.data import load_examples, prompt_ids, trace_ids
from learner.evaluation import EvalRounds
from learner.feeder import Feeder
from learner.train import StepResult, Trainer, list_checkpoints

log = logging.getLogger(__name__)
LEARNER_CONSUMER = "learner"
# Trim often: a stream then holds about TRIM_EVERY_S of production plus what is not yet acked
# (scored entries wait for a checkpoint), whatever the throughput. At 30 s the soak test saw
# stream peaks track the stack's speed (6k -> 9k scored entries as the VM sped up).
TRIM_EVERY_S = 2.0


class RunExists(RuntimeError):
    """A fresh learner was started on a run name that already has checkpoints or state."""


class LearnerWorker:
    def __init__(self) -> None:
        self.trainer: Trainer | None = None
        self.version = 0
        self.last: StepResult | None = None
        self.batch_stats: dict[str, float] = {}
        self.resolved: Counter[str] = Counter()  # trained / stale / incomplete / lost
        self.unacked: list[Delivery] = []
        self.trained_tasks: set[str] = set()  # since the last ack (ignore late duplicates)
        self._checkpoint_requested = threading.Event()
        self.last_sync: dict[str, Any] = {}
        self._checkpointed_step = 0
        self.ledger: dict[str, list[str]] = {}  # outcome -> task ids since the last checkpoint
        self.last_eval: dict[str, Any] = {}
        self.queues: dict[str, dict[str, int]] = {}
        self._final_eval_started = False
        self._next_queues = 0.0
        self._next_trim = 0.0
        self.trimmed = 0

    # ---------------------------------------------------------------- setup

    def setup(self, ctx: ServiceContext) -> None:
        from transformers import AutoTokenizer

        self.ctx, cfg = ctx, ctx.config
        self.started = time.monotonic()
        self.cfg, self.lc, self.algo = cfg, cfg.learner, cfg.algorithm
        if cfg.learner.train_file is None:
            raise ValueError("learner.train_file is required (a .jsonl or .parquet of prompts)")
        self.examples, self.bad_rows = load_examples(cfg.learner.train_file)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        self.trainer = Trainer(cfg)
        self.rng = random.Random(cfg.run.seed)
        self.ckpt_root = str(cfg.run.run_dir / "checkpoints")
        self.board = SyncBoard(ctx.redis, ctx.keys)
        self.broadcaster = WeightBroadcaster(ctx.redis, ctx.keys, cfg.sync)
        self.consumer = StreamConsumer(
            ctx.redis,
            ctx.keys,
            "scored",
            LEARNER_CONSUMER,
            cfg.redis,
            decode=decode_scored,
            reclaim=False,
        )
        self.feeder = Feeder(
            self.examples,
            self.tokenizer,
            cfg,
            StreamPublisher(ctx.redis, ctx.keys, "prompts"),
            StreamPublisher(ctx.redis, ctx.keys, "rollouts"),
        )
        self.assembler = GroupAssembler(cfg.learner.group_timeout_s)
        self.evals = self._eval_rounds(ctx)
        self.metrics_path = cfg.run.run_dir / "metrics.jsonl"
        self._metrics(ctx)
        self._restore()
        if self.evals and self.trainer.step % self.lc.eval_every == 0:
            self.evals.start(self.trainer.step)
        for delivery in self.consumer.fetch_own_pending():
            self._accept(delivery)
        log.info(
            "learner ready: %d examples (%d bad rows skipped), step %d, version %d",
            len(self.examples),
            self.bad_rows.count,
            self.trainer.step,
            self.version,
        )

    def _eval_rounds(self, ctx: ServiceContext) -> EvalRounds | None:
        if not (self.lc.eval_file and self.lc.eval_every):
            return None
        examples, _ = load_examples(self.lc.eval_file)
        return EvalRounds(
            examples, self.tokenizer, self.cfg, StreamPublisher(ctx.redis, ctx.keys, "prompts")
        )

    def _write_metrics(self, row: dict[str, Any]) -> None:
        row = {"time": round(time.time(), 3), "version": self.version, **row}
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")

    def _restore(self) -> None:
        """Resume from the newest checkpoint if asked; versions never go backwards."""
        current = self.board.policy_version()
        checkpoints = list_checkpoints(self.ckpt_root)
        if not self.lc.resume:
            self._refuse_to_start_over(checkpoints)
        if self.lc.resume and checkpoints:
            meta = self.trainer.run("load", checkpoints[-1])
            self.feeder.load_state(meta["feeder"])
            self.resolved.update(meta.get("resolved", {}))
            self.version = int(meta.get("version", 0))
            self._checkpointed_step = self.trainer.step
            self._write_ledger(self.trainer.step, meta.get("ledger", {}))  # if the crash beat it
            log.info("resumed from %s (step %d)", checkpoints[-1], self.trainer.step)
        elif self.lc.resume:
            log.warning("learner.resume is set but %s holds no checkpoint", self.ckpt_root)
        if self.lc.resume or current > self.version:
            # generators may hold newer weights than ours: push ours under a new version
            self.version = max(self.version, current)
            self._sync()

    def _refuse_to_start_over(self, checkpoints: list) -> None:
        """A fresh start on top of an earlier run of the same name would stall (its ids are
        already done downstream) or mix checkpoints: say so instead."""
        run = self.cfg.run.name
        if checkpoints:
            raise RunExists(
                f"run {run!r} already has checkpoints in {self.ckpt_root} (newest "
                f"{checkpoints[-1]}): continue it with --learner.resume true (luffy up does), "
                "or start a new run with another --run.name"
            )
        refusal = stale_run_refusal(self.ctx.redis, self.ctx.keys, self.ckpt_root)
        if refusal:
            raise RunExists(refusal)

    def _metrics(self, ctx: ServiceContext) -> None:
        m = ctx.metrics
        self.m_steps = m.counter("steps_total", "Optimizer steps taken")
        self.m_skipped = m.counter("skipped_steps_total", "Steps skipped (non-finite loss/grad)")
        self.m_step_s = m.histogram(
            "step_seconds",
            "Time per training step",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.m_tokens = m.counter("tokens_trained_total", "Response tokens trained on")
        self.m_samples = m.counter("samples_trained_total", "Samples trained on", ["kind"])
        self.m_loss = m.gauge("loss_value", "Loss of the last step, by part", ["part"])
        self.m_entropy = m.gauge("entropy_nats", "Mean token entropy of the last step")
        self.m_reward = m.gauge("reward_ratio", "Mean reward of the last batch", ["kind"])
        self.m_grad = m.gauge("grad_norm_value", "Gradient norm before clipping")
        self.m_lr = m.gauge("lr_value", "Learning rate")
        self.m_lag = m.gauge("version_lag_steps", "Largest policy lag in the last batch")
        self.m_sync_s = m.histogram("sync_seconds", "Weight push time (announce to acks)")
        self.m_syncs = m.counter("syncs_total", "Weight pushes, by result", ["result"])
        m.gauge_fn("policy_version", "Policy version last pushed", lambda: self.version)
        self.m_queue_lag = m.gauge("queue_lag_count", "Entries not yet read, by stream", ["stream"])
        self.m_queue_pending = m.gauge(
            "queue_pending_count", "Entries read, not yet acked", ["stream"]
        )
        self.m_eval = m.gauge("eval_reward_ratio", "Held-out mean reward (avg@k) of the last eval")
        self.m_eval_pass = m.gauge("eval_pass_ratio", "Held-out pass@k of the last evaluation")
        m.counter_fn(
            "groups_resolved_total",
            "Groups leaving the learner, by outcome",
            lambda: dict(self.resolved),
        )
        m.gauge_fn(
            "inflight_count", "Tasks fed and not yet resolved", lambda: len(self.feeder.inflight)
        )
        m.gauge_fn(
            "ready_groups_count", "Complete groups waiting", lambda: len(self.assembler.ready)
        )
        m.gauge_fn(
            "pending_groups_count",
            "Incomplete groups collecting samples",
            lambda: len(self.assembler.pending),
        )
        m.counter_fn(
            "deadletter_total",
            "Scored entries sent to deadletter, by reason",
            lambda: dict(self.consumer.stats.deadletter_reasons),
        )

    def close(self) -> None:
        if self.trainer is not None:
            if self.trainer.step > self._checkpointed_step:  # leave a resumable checkpoint
                self._checkpoint()
            self.trainer.stop_followers()

    # ---------------------------------------------------------------- loop

    def _done(self) -> bool:
        if self.trainer.step >= self.lc.max_steps:
            return True
        limit = self.lc.max_minutes
        return limit is not None and time.monotonic() - self.started > limit * 60

    def step(self) -> bool:
        if self._done():
            return self._finish()
        if self._checkpoint_requested.is_set():
            self._checkpoint_requested.clear()
            self._checkpoint()
        if self.algo.mode == "sft":
            self._train(self._sft_batch())
            return True
        self.feeder.top_up()
        want = self.lc.batch_prompts
        block = 0 if len(self.assembler.ready) >= want else min(self.cfg.redis.block_ms, 200)
        self._receive(block)
        self._expire()
        if len(self.assembler.ready) < want:
            return False
        groups = self.assembler.take(want)
        batch, stale = build_batch(groups, self.version, self.algo, self.rng)
        for group in stale:
            self._resolve(group.task_id, "stale")
        if batch.samples:
            self._train(batch, [g.task_id for g in groups if g not in stale])
        return True

    def _finish(self) -> bool:
        """After the last step: evaluate the final weights (bounded wait), then stop."""
        if self.evals and not self._final_eval_started:
            self._final_eval_started = True
            if (
                self.trainer.step not in self.evals.rounds
                and self.last_eval.get("step") != self.trainer.step
            ):
                self.evals.start(self.trainer.step)
        if self.evals and self.evals.rounds:
            self._receive(200)
            return True
        log.info(
            "training done at step %d (max_steps %d, max_minutes %s)",
            self.trainer.step,
            self.lc.max_steps,
            self.lc.max_minutes,
        )
        self.ctx.stop.set()
        return False

    def _refresh_queues(self) -> None:
        now = time.monotonic()
        if now >= self._next_trim:  # the learner keeps the streams bounded for everyone
            self._next_trim = now + TRIM_EVERY_S
            for name in STREAM_GROUPS:
                self.trimmed += trim_acked(self.ctx.redis, self.ctx.keys, name)
        if now < self._next_queues:
            return
        self._next_queues = now + 1.0
        for name, depth in stream_depths(self.ctx.redis, self.ctx.keys).items():
            self.queues[name] = depth
            if name != "deadletter":
                self.m_queue_lag.labels(name).set(depth["lag"])
                self.m_queue_pending.labels(name).set(depth["pending"])

    def _receive(self, block_ms: int) -> None:
        self._refresh_queues()
        for delivery in self.consumer.fetch(block_ms=block_ms):
            self._accept(delivery)
        if self.evals:
            for result in self.evals.finished(self.lc.group_timeout_s):
                self.m_eval.set(result["reward_mean"])
                self.m_eval_pass.set(result["pass_at_k"])
                self.last_eval = result
                self._write_metrics(result)
                log.info(
                    "eval at step %d: reward %.3f pass@%d %.3f (%d prompts)",
                    result["step"],
                    result["reward_mean"],
                    self.lc.eval_samples,
                    result["pass_at_k"],
                    result["prompts"],
                )

    def _accept(self, delivery: Delivery[ScoredRollout]) -> None:
        task_id = delivery.value.rollout.task_id
        if self.evals is not None and EvalRounds.is_eval(task_id):
            self.evals.add(delivery.value)
            self.consumer.commit([(delivery, [])])  # evaluation never trains: ack at once
            return
        self.unacked.append(delivery)
        if task_id in self.trained_tasks:
            self.assembler.duplicates += 1
            return
        self.assembler.add(delivery.value, self.feeder.expected(task_id))

    def _expire(self) -> None:
        for group in self.assembler.expire():
            self._resolve(group.task_id, "incomplete")
        waiting = set(self.assembler.pending) | {g.task_id for g in self.assembler.ready}
        for fed in self.feeder.overdue(self.lc.group_timeout_s):
            if fed.task_id not in waiting:
                self._resolve(fed.task_id, "lost")

    def _resolve(self, task_id: str, outcome: str) -> None:
        self.feeder.resolve(task_id)
        self.resolved[outcome] += 1
        self.trained_tasks.add(task_id)
        self.ledger.setdefault(outcome, []).append(task_id)

    def _train(self, batch: TrainBatch, task_ids: list[str] = ()) -> None:
        result = self.trainer.run("train_step", batch)
        self.last, self.batch_stats = result, batch.stats
        self._record(result, batch)
        for task_id in task_ids:
            self._resolve(task_id, "trained")
        step = result.step
        self._write_metrics(
            {
                "kind": "train",
                "step": step,
                "loss": result.loss,
                "entropy": result.entropy,
                "skipped": result.skipped,
                "step_seconds": round(result.seconds, 4),
                "tokens": result.tokens,
                "samples_on": sum(not s.off_policy for s in batch.samples),
                **{k: round(v, 6) for k, v in batch.stats.items()},
            }
        )
        if step % self.cfg.sync.every == 0:
            self._sync()
        if self.lc.checkpoint_every and step % self.lc.checkpoint_every == 0:
            self._checkpoint()
        elif not self.lc.checkpoint_every:
            self._ack()
        if self.evals and (step % self.lc.eval_every == 0 or self._done()):
            self.evals.start(step)  # after the sync: it measures the weights just trained

    def _record(self, result: StepResult, batch: TrainBatch) -> None:
        self.m_steps.inc()
        if result.skipped:
            self.m_skipped.inc()
        self.m_step_s.observe(result.seconds)
        self.m_tokens.inc(result.tokens)
        off = sum(s.off_policy for s in batch.samples)
        self.m_samples.labels("on_policy").inc(len(batch.samples) - off)
        self.m_samples.labels("off_policy").inc(off)
        for part, value in {**result.parts, "total": result.loss}.items():
            self.m_loss.labels(part).set(value)
        self.m_entropy.set(result.entropy)
        self.m_grad.set(result.grad_norm)
        self.m_lr.set(result.lr)
        for kind in ("", "on", "off"):
            key = f"reward_{kind}_mean" if kind else "reward_mean"
            self.m_reward.labels(kind or "all").set(batch.stats.get(key, 0.0))
        self.m_lag.set(batch.stats.get("lag_max", 0.0))
        log.info(
            "step %d loss %.4f entropy %.3f reward %.3f (on %.3f off %.3f) lag %d %.2fs",
            result.step,
            result.loss,
            result.entropy,
            batch.stats.get("reward_mean", 0.0),
            batch.stats.get("reward_on_mean", 0.0),
            batch.stats.get("reward_off_mean", 0.0),
            batch.stats.get("lag_max", 0),
            result.seconds,
        )

    def _sft_batch(self) -> TrainBatch:
        """SFT mode: traces straight from the data, no generation."""
        samples = []
        while len(samples) < self.lc.batch_prompts:
            _, index = self.feeder._next()
            ex = self.examples[index]
            if ex.target is None:
                continue
            prompt = prompt_ids(self.tokenizer, ex.prompt, self.cfg.model.template)
            trace = trace_ids(self.tokenizer, ex.target)
            samples.append(
                Sample(prompt + trace, len(prompt), [0.0] * len(trace), 0.0, True, 1.0, 0)
            )
        return TrainBatch(samples, len(samples), {"reward_mean": 1.0, "reward_off_mean": 1.0})

    # ---------------------------------------------------------------- sync and checkpoints

    def _sync(self) -> None:
        weights = self.trainer.run("full_state_dict")
        result = self.broadcaster.push(self.version + 1, weights.items())
        self.m_sync_s.observe(result.seconds)
        self.m_syncs.labels("ok" if result.ok else "failed").inc()
        if result.ok:
            self.version = result.version
        self.last_sync = {
            "version": result.version,
            "ok": result.ok,
            "members": result.members,
            "failed": result.failed,
            "seconds": round(result.seconds, 3),
        }

    def _checkpoint(self) -> str:
        extra = {
            "version": self.version,
            "feeder": self.feeder.state(),
            "resolved": dict(self.resolved),
            "ledger": self.ledger,
        }
        path = self.trainer.run("save", self.ckpt_root, extra, self.lc.keep_last, self.lc.export_hf)
        self._checkpointed_step = self.trainer.step
        self._write_ledger(self.trainer.step, self.ledger)
        self.ledger = {}
        self._ack()
        log.info("checkpoint %s", path)
        return path

    def _write_ledger(self, step: int, ledger: dict[str, list[str]]) -> None:
        """``<run>/ledger/step_N.json``: the groups trained or dropped (by reason) between the
        previous checkpoint and checkpoint N, i.e. exactly what that checkpoint's weights
        have seen; the union over checkpoints is the run's lineage."""
        folder = self.cfg.run.run_dir / "ledger"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".step_{step:08d}.tmp"
        tmp.write_text(json.dumps(ledger))
        tmp.replace(folder / f"step_{step:08d}.json")

    def _ack(self) -> None:
        """Ack every scored entry received so far (their groups are trained or accounted)."""
        held = {g.task_id for g in self.assembler.ready} | set(self.assembler.pending)
        done = [d for d in self.unacked if d.value.rollout.task_id not in held]
        self.unacked = [d for d in self.unacked if d.value.rollout.task_id in held]
        self.consumer.commit([(d, []) for d in done])
        self.trained_tasks.clear()

    # ---------------------------------------------------------------- REST

    def status(self) -> dict[str, Any]:
        last = self.last
        return {
            "step": self.trainer.step if self.trainer else 0,
            "max_steps": self.lc.max_steps,
            "policy_version": self.version,
            "mode": self.algo.mode,
            "reward_mean": self.batch_stats.get("reward_mean"),
            "reward_on_mean": self.batch_stats.get("reward_on_mean"),
            "loss": last.loss if last else None,
            "loss_parts": last.parts if last else {},
            "entropy": last.entropy if last else None,
            "lag_max": self.batch_stats.get("lag_max"),
            "skipped_steps": self.trainer.skipped if self.trainer else 0,
            "inflight": len(self.feeder.inflight),
            "groups": {"ready": len(self.assembler.ready), "pending": len(self.assembler.pending)},
            "resolved": dict(self.resolved),
            "fed": self.feeder.fed_total,
            "bad_rows": self.bad_rows.count,
            "last_sync": self.last_sync,
            "last_eval": self.last_eval,
            "queues": self.queues,
            "trimmed_entries": self.trimmed,
            "response_len_on_mean": self.batch_stats.get("response_len_on_mean"),
            "cursor": self.feeder.state()["cursor"],
        }

    def not_ready(self) -> list[str]:
        return [] if self.trainer is not None else ["trainer not built"]

    def controls(self) -> dict:
        def checkpoint() -> dict[str, Any]:
            self._checkpoint_requested.set()  # written by the loop, between steps
            return {"checkpoint": "requested", "step": self.trainer.step}

        return {"checkpoint": checkpoint}

    def member_info(self) -> dict[str, Any]:
        return {"step": self.trainer.step if self.trainer else 0, "policy_version": self.version}

    def routes(self, app: Any, ctx: ServiceContext) -> None:
        pass


def follow(cfg: Any) -> int:
    """Ranks > 0 under torchrun: build the trainer and execute rank 0's calls."""
    import torch.distributed as dist

    Trainer(cfg).follow()
    # gloo's threads still running at interpreter exit made a rank abort ("terminate called
    # without an active exception") now and then
    dist.destroy_process_group()
    return 0


__all__ = ["LearnerWorker", "follow"]
