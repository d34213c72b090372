"""What the learner tells the world: Prometheus metrics, ``metrics.jsonl`` rows, log lines and
the ``/status`` JSON.

``LearnerTelemetry`` owns the metric objects and the latest readings (last step, its batch
statistics, last sync, last evaluation, queue depths, entries trimmed); it reads the loop's
parts (feeder, assembler, bookkeeping, consumer) only through the gauges and ``status``. It
writes nothing but ``<run>/metrics.jsonl`` (one row per step and per evaluation, the source of
truth for plots) and hands each row, once written, to the run's experiment trackers
(``learner.tracking``, off unless ``[tracking]`` turns one on; it lives on rank 0 only).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.metrics import Metrics
from common.transport import StreamConsumer
from learner.batch import GroupAssembler, TrainBatch
from learner.bookkeeping import Bookkeeping
from learner.feeder import Feeder
from learner.tracking import Trackers
from learner.train import StepResult

log = logging.getLogger(__name__)
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class LearnerTelemetry:
    def __init__(
        self,
        metrics: Metrics,
        metrics_path: Path,
        version: Callable[[], int],
        feeder: Feeder,
        assembler: GroupAssembler,
        books: Bookkeeping,
        consumer: StreamConsumer,
    ):
        self.path, self.version = metrics_path, version
        self.feeder, self.assembler, self.books = feeder, assembler, books
        self.last: StepResult | None = None
        self.batch_stats: dict[str, float] = {}
        self.last_sync: dict[str, Any] = {}
        self.last_eval: dict[str, Any] = {}
        self.queues: dict[str, dict[str, int]] = {}
        self.trimmed = 0
        self.checkpoint_error = ""  # the last checkpoint's failure, until one succeeds
        self.rows_lost = 0  # metrics.jsonl rows that could not be written
        self.trackers = Trackers()  # the worker sets the run's once nothing can refuse the start
        self._register(metrics, consumer)

    def _register(self, m: Metrics, consumer: StreamConsumer) -> None:
        self.m_steps = m.counter("steps_total", "Optimizer steps taken")
        self.m_skipped = m.counter("skipped_steps_total", "Steps skipped (non-finite loss/grad)")
        self.m_step_s = m.histogram("step_seconds", "Time per training step", buckets=STEP_BUCKETS)
        self.m_tokens = m.counter("tokens_trained_total", "Response tokens trained on")
        self.m_samples = m.counter("samples_trained_total", "Samples trained on", ["kind"])
        self.m_loss = m.gauge("loss_value", "Loss of the last step, by part", ["part"])
        self.m_entropy = m.gauge("entropy_nats", "Mean token entropy of the last step")
        self.m_reward = m.gauge("reward_ratio", "Mean reward of the last batch", ["kind"])
        self.m_grad = m.gauge("grad_norm_value", "Gradient norm before clipping")
        self.m_lr = m.gauge("lr_value", "Learning rate")
        self.m_lag = m.gauge("version_lag_steps", "Largest policy lag in the last batch")
        self.m_diag = m.gauge(
            "update_diagnostic_value",
            "Per-step update diagnostics: truncated_share, mismatch_k1, mismatch_k3, "
            "behav_k3, is_weight_mean, is_capped_share, eos_prob_mean (see learner.diagnostics)",
            ["what"],
        )
        self.m_clipped = m.counter("grad_clipped_total", "Steps whose gradient norm was clipped")
        self.m_sync_s = m.histogram("sync_seconds", "Weight push time (announce to acks)")
        self.m_syncs = m.counter("syncs_total", "Weight pushes, by result", ["result"])
        m.gauge_fn("policy_version", "Policy version last pushed", self.version)
        self.m_queue_lag = m.gauge("queue_lag_count", "Entries not yet read, by stream", ["stream"])
        self.m_queue_pending = m.gauge(
            "queue_pending_count", "Entries read, not yet acked", ["stream"]
        )
        self.m_eval = m.gauge("eval_reward_ratio", "Held-out mean reward (avg@k) of the last eval")
        self.m_eval_pass = m.gauge("eval_pass_ratio", "Held-out pass@k of the last evaluation")
        books, feeder, asm = self.books, self.feeder, self.assembler
        m.counter_fn(
            "groups_resolved_total",
            "Groups leaving the learner, by outcome",
            lambda: dict(books.resolved),
        )
        m.gauge_fn("inflight_count", "Tasks fed and not yet resolved", lambda: len(feeder.inflight))
        m.gauge_fn("ready_groups_count", "Complete groups waiting", lambda: len(asm.ready))
        m.gauge_fn(
            "pending_groups_count", "Incomplete groups collecting samples", lambda: len(asm.pending)
        )
        m.counter_fn(
            "deadletter_total",
            "Scored entries sent to deadletter, by reason",
            lambda: dict(consumer.stats.deadletter_reasons),
        )

    # ---------------------------------------------------------------- readings

    def write_row(self, row: dict[str, Any]) -> None:
        row = {"time": round(time.time(), 3), "version": self.version(), **row}
        try:
            with self.path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        except OSError as exc:  # a full disk must not stop training; the rows say so
            self.rows_lost += 1
            if self.rows_lost == 1 or self.rows_lost % 100 == 0:
                log.error("cannot append to %s (%s): %d rows lost", self.path, exc, self.rows_lost)
        self.trackers.log_row(row)

    def close(self) -> None:
        """The end of the run: flush and close the trackers."""
        self.trackers.close()

    def step(self, result: StepResult, batch: TrainBatch) -> None:
        """A training step: metrics, its metrics.jsonl row and a log line."""
        self.last, self.batch_stats, stats = result, batch.stats, batch.stats
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
            self.m_reward.labels(kind or "all").set(stats.get(key, 0.0))
        self.m_lag.set(stats.get("lag_max", 0.0))
        diag = {"truncated_share": stats.get("truncated_share", 0.0), **result.diagnostics}
        for what, value in diag.items():
            if what != "grad_clipped":
                self.m_diag.labels(what).set(value)
        if result.diagnostics.get("grad_clipped"):
            self.m_clipped.inc()
        self.write_row(
            {
                "kind": "train",
                "step": result.step,
                "loss": result.loss,
                "entropy": result.entropy,
                "skipped": result.skipped,
                "step_seconds": round(result.seconds, 4),
                "lr": result.lr,
                "tokens": result.tokens,
                "samples_on": len(batch.samples) - off,
                "grad_norm": round(result.grad_norm, 6),
                **{k: round(v, 6) for k, v in stats.items()},
                **{k: round(v, 6) for k, v in result.diagnostics.items()},
            }
        )
        log.info(
            "step %d loss %.4f entropy %.3f reward %.3f (on %.3f off %.3f) lag %d %.2fs",
            result.step,
            result.loss,
            result.entropy,
            stats.get("reward_mean", 0.0),
            stats.get("reward_on_mean", 0.0),
            stats.get("reward_off_mean", 0.0),
            stats.get("lag_max", 0),
            result.seconds,
        )

    def sync(self, result: Any) -> None:
        """A weight push (``learner.broadcast.SyncResult``)."""
        self.m_sync_s.observe(result.seconds)
        self.m_syncs.labels("ok" if result.ok else "failed").inc()
        self.last_sync = {
            "version": result.version,
            "ok": result.ok,
            "members": result.members,
            "failed": result.failed,
            "seconds": round(result.seconds, 3),
        }

    def evaluation(self, result: dict[str, Any], samples_per_prompt: int) -> None:
        """A finished held-out evaluation round."""
        self.m_eval.set(result["reward_mean"])
        self.m_eval_pass.set(result["pass_at_k"])
        self.last_eval = result
        self.write_row(result)
        top = result.get("diverge_top") or [["-", "", "", 0]]
        log.info(
            "eval at step %d: reward %.3f pass@%d %.3f (%d prompts); wrong samples leave the "
            "trace most at token %s (%r -> %r, %d of %d, mean p %s)",
            result["step"],
            result["reward_mean"],
            samples_per_prompt,
            result["pass_at_k"],
            result["prompts"],
            *top[0],
            result.get("wrong_vs_trace", 0),
            result.get("diverge_prob_mean"),
        )

    def queue_depths(self, depths: dict[str, dict[str, int]]) -> None:
        for name, depth in depths.items():
            self.queues[name] = depth
            if name != "deadletter":
                self.m_queue_lag.labels(name).set(depth["lag"])
                self.m_queue_pending.labels(name).set(depth["pending"])

    # ---------------------------------------------------------------- REST

    def status(self, step: int, max_steps: int, mode: str, skipped: int, bad_rows: int) -> dict:
        last, stats = self.last, self.batch_stats
        return {
            "step": step,
            "max_steps": max_steps,
            "policy_version": self.version(),
            "mode": mode,
            "reward_mean": stats.get("reward_mean"),
            "reward_on_mean": stats.get("reward_on_mean"),
            "loss": last.loss if last else None,
            "loss_parts": last.parts if last else {},
            "entropy": last.entropy if last else None,
            "lag_max": stats.get("lag_max"),
            "skipped_steps": skipped,
            "inflight": len(self.feeder.inflight),
            "groups": {"ready": len(self.assembler.ready), "pending": len(self.assembler.pending)},
            "resolved": dict(self.books.resolved),
            "fed": self.feeder.fed_total,
            "bad_rows": bad_rows,
            "last_sync": self.last_sync,
            "last_eval": self.last_eval,
            "queues": self.queues,
            "trimmed_entries": self.trimmed,
            "checkpoint_error": self.checkpoint_error,
            "metrics_rows_lost": self.rows_lost,
            "response_len_on_mean": stats.get("response_len_on_mean"),
            "cursor": self.feeder.state()["cursor"],
        }


__all__ = ["LearnerTelemetry"]
