"""The verifier's work: ``rollouts`` -> reward -> ``scored``.

Runs inside the process shell (``common.shell``: work loop, REST app, heartbeat).

Parts and ownership:
- ``VerifierWorker`` (runs in the process's main thread): owns the stream consumer, the
  scoring pool and the in-flight map (future -> delivery). Each ``step`` tops the pool up with
  new rollouts (so workers never idle while entries wait), then commits every finished verdict
  (scored entry written + rollout acked + id recorded, atomically). A rollout in flight when
  the process dies is still pending in Redis and another verifier reclaims it. Finished
  futures arrive on the ``done`` queue through callbacks (cheaper than polling them).
- ``ScoringPool`` (``verifier.pool``): the hard per-answer time limit.
- REST: ``POST /v1/verify`` scores one ``{answer, gold}`` through the same pool.
"""

# No `from __future__ import annotations`: FastAPI must see the request model built at run time.

import logging
import queue
import time
from concurrent.futures import Future
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, create_model

from common.schemas import STATUSES, Rollout, ScoredRollout, decode_rollout, encode_scored
from common.shell import ServiceContext, StartupError
from common.transport import Delivery, Output, RunStateLost, StreamConsumer, stream_depths
from common.transport.marker import RunMarker
from verifier.pool import ScoringPool
from verifier.rewards import (
    Verdict,
    make_reward,
    missing_think_tag,
    reward_for_source,
    reward_module,
)

log = logging.getLogger(__name__)
_LAG_EVERY_S = 1.0
_COMMIT_WINDOW_S = 0.02
_GOLD_MAX_CHARS = 10_000


class VerifyResult(BaseModel):
    reward: float
    status: str
    extracted: str
    detail: str
    ms: float


class VerifierWorker:
    def __init__(self) -> None:
        self.ctx: ServiceContext | None = None
        self.pool: ScoringPool | None = None
        # future -> (delivery, submitted at, the run incarnation it was read under)
        self.inflight: dict[Future, tuple[Delivery[Rollout], float, str]] = {}
        self.done: queue.SimpleQueue[Future] = queue.SimpleQueue()  # filled by pool callbacks
        self.lag = {"length": 0, "lag": 0, "pending": 0}
        self._next_lag = 0.0

    # ---------------------------------------------------------------- lifecycle

    def setup(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        cfg = ctx.config.verifier
        if cfg.reward != "auto":
            try:
                make_reward(cfg.reward)  # fail fast on an unknown name, plugin or import path
            except (ValueError, ImportError) as exc:
                raise StartupError(f"verifier.reward: {exc}") from None
        self.reward, self.think_tags = cfg.reward, ctx.config.model.think_tags
        self.max_chars = cfg.max_answer_chars
        self.capacity = cfg.workers * 8
        preload = [m for m in [reward_module(cfg.reward)] if m]
        self.pool = ScoringPool(cfg.workers, cfg.timeout_s, stall_s=cfg.stall_s, preload=preload)
        self.consumer = StreamConsumer(
            ctx.redis, ctx.keys, "rollouts", ctx.member_id, ctx.config.redis, decode=decode_rollout
        )
        self.marker = RunMarker(ctx.redis, ctx.keys)
        self.dropped_state_lost = 0  # verdicts dropped because Redis lost the run's state
        self._metrics(ctx)
        log.info(
            "verifier ready: reward=%s workers=%d limit=%.1fs",
            cfg.reward,
            cfg.workers,
            cfg.timeout_s,
        )

    def _metrics(self, ctx: ServiceContext) -> None:
        m, stats, pool = ctx.metrics, self.consumer.stats, self.pool
        self.scored = m.counter("scored_total", "Rollouts scored, by status", ["status"])
        for status in STATUSES:
            self.scored.labels(status)
        self.latency = m.histogram("score_seconds", "Time from submit to verdict")
        m.counter_fn(
            "duplicates_total",
            "Re-delivered rollouts acked without scoring twice",
            lambda: stats.duplicates,
        )
        m.counter_fn(
            "deadletter_total",
            "Entries sent to deadletter, by reason",
            lambda: dict(stats.deadletter_reasons),
        )
        m.counter_fn(
            "reclaimed_total", "Entries reclaimed from dead consumers", lambda: stats.reclaimed
        )
        m.counter_fn(
            "worker_restarts_total",
            "Scoring workers replaced (timeout or crash)",
            lambda: pool.stats.restarts,
        )
        m.gauge_fn(
            "queue_lag_count", "Rollouts not yet delivered to any verifier", lambda: self.lag["lag"]
        )
        m.gauge_fn(
            "queue_pending_count",
            "Rollouts delivered but not yet acked",
            lambda: self.lag["pending"],
        )
        m.gauge_fn(
            "inflight_count", "Rollouts being scored by this verifier", lambda: len(self.inflight)
        )

    def close(self) -> None:
        # in-flight entries are not acked: they stay pending and are reclaimed elsewhere
        if self.pool:
            self.pool.close()

    # ---------------------------------------------------------------- work loop

    def step(self) -> bool:
        lost = self.marker.lost()  # while Redis lost the run's state, read nothing new
        self.consumer.incarnation = self.marker.value
        fetched = 0 if lost else self._top_up()
        if not self.inflight:
            return fetched > 0
        try:
            done = [self.done.get(timeout=0.05)]
        except queue.Empty:
            return True
        # Gather what finishes in the next few ms into the same commit: one Redis round trip
        # per several answers keeps this process's own CPU small next to the scoring workers.
        window_end = time.monotonic() + _COMMIT_WINDOW_S
        while len(done) < len(self.inflight):
            try:
                done.append(self.done.get(timeout=max(0.0, window_end - time.monotonic())))
            except queue.Empty:
                break
        self._commit(done)
        self._refresh_lag()
        return True

    def _top_up(self) -> int:
        room = self.capacity - len(self.inflight)
        # refill in chunks (one Redis round trip per several answers), or at once when idle
        if room < self.capacity // 2 and self.inflight:
            return 0
        block = 0 if self.inflight else None  # block only when there is nothing to wait for
        batch = self.consumer.fetch(count=room, block_ms=block)
        now = time.monotonic()
        for delivery in batch:
            rollout = delivery.value
            future = self._submit(rollout.text, rollout.gold, reward=self._reward_for(rollout))
            self.inflight[future] = (delivery, now, self.consumer.incarnation)
            future.add_done_callback(self.done.put)
        return len(batch)

    def _reward_for(self, rollout: Rollout) -> str:
        return reward_for_source(rollout.data_source) if self.reward == "auto" else self.reward

    def _submit(
        self, answer: str, gold: str, think_tags: bool | None = None, reward: str | None = None
    ) -> Future:
        think = self.think_tags if think_tags is None else think_tags
        if len(answer) > self.max_chars:
            detail = f"answer of {len(answer)} chars exceeds verifier.max_answer_chars"
            return _decided(Verdict(0.0, "error", "", f"{detail} ({self.max_chars})"))
        verdict = missing_think_tag(answer, think)
        if verdict is not None:  # decided here: a worker round trip would cost more than this
            return _decided(verdict)
        name = reward or (self.reward if self.reward != "auto" else "math")
        return self.pool.submit(name, answer, gold, think)

    def _commit(self, done: list[Future]) -> None:
        """Commit finished verdicts, each under the run state it was read in."""
        by_state: dict[str, list[Future]] = {}
        for future in done:
            by_state.setdefault(self.inflight[future][2], []).append(future)
        for incarnation, futures in by_state.items():
            try:
                self._commit_verdicts(futures, incarnation)
            except RunStateLost as exc:  # read before Redis lost the run's state: drop them
                self.dropped_state_lost += len(futures)
                log.warning("dropping %d verdicts: %s", len(futures), exc)

    def _commit_verdicts(self, done: list[Future], incarnation: str) -> None:
        batch, statuses = [], []
        now = time.monotonic()
        for future in done:
            delivery, started, _ = self.inflight.pop(future)
            verdict: Verdict = future.result()
            elapsed = now - started
            scored = ScoredRollout(
                delivery.value,
                verdict.reward,
                verdict.status,
                verdict.extracted,
                self.ctx.member_id,
                elapsed * 1000,
            )
            batch.append((delivery, [Output("scored", delivery.key, encode_scored(scored))]))
            statuses.append(verdict.status)
            self.latency.observe(elapsed)
        written = self.consumer.commit(batch, incarnation=incarnation)
        for status, new in zip(statuses, written, strict=True):
            if new:  # a duplicate was acked but not scored again: not counted twice
                self.scored.labels(status).inc()

    def _refresh_lag(self) -> None:
        now = time.monotonic()
        if now >= self._next_lag:
            self._next_lag = now + _LAG_EVERY_S
            self.lag = stream_depths(self.ctx.redis, self.ctx.keys)["rollouts"]

    # ---------------------------------------------------------------- REST

    def status(self) -> dict[str, Any]:
        stats, pool = self.consumer.stats, self.pool.stats
        return {
            "reward": self.reward,
            "workers": self.pool.workers,
            "workers_alive": self.pool.alive_workers(),
            "inflight": len(self.inflight),
            "queue": self.lag,
            "counters": {
                "scored": {s: self.scored.labels(s)._value.get() for s in STATUSES},
                "duplicates": stats.duplicates,
                "deadlettered": stats.deadlettered,
                "reclaimed": stats.reclaimed,
                "timeouts": pool.timeouts,
                "worker_restarts": pool.restarts,
                "dropped_state_lost": self.dropped_state_lost,
            },
        }

    def not_ready(self) -> list[str]:
        if self.pool is None or self.pool.alive_workers() == 0:
            return ["no scoring worker alive"]
        lost = self.marker.reason
        return [f"{lost}; waiting for the learner to rebuild it"] if lost else []

    def controls(self) -> dict:
        return {}

    def member_info(self) -> dict[str, Any]:
        return {"reward": self.reward}

    def routes(self, app: FastAPI, ctx: ServiceContext) -> None:
        request_model = _request_model(ctx.config.verifier.max_answer_chars)

        @app.post("/v1/verify", response_model=VerifyResult)
        def verify(body: request_model) -> VerifyResult:  # type: ignore[valid-type]
            if self.pool is None:
                raise HTTPException(503, "verifier is starting")
            started = time.monotonic()
            verdict = self._submit(body.answer, body.gold, body.think_tags).result()
            return VerifyResult(**asdict(verdict), ms=(time.monotonic() - started) * 1000)


def _decided(verdict: Verdict) -> Future:
    """A future that already holds ``verdict`` (answers judged without a worker)."""
    future: Future = Future()
    future.set_result(verdict)
    return future


def _request_model(max_answer_chars: int) -> type[BaseModel]:
    return create_model(
        "VerifyRequest",
        __config__=ConfigDict(extra="forbid"),
        answer=(str, Field(max_length=max_answer_chars, description="Model response to judge")),
        gold=(str, Field(max_length=_GOLD_MAX_CHARS, description="Gold answer")),
        think_tags=(bool | None, Field(None, description="Require </think> (default: config)")),
    )


__all__ = ["VerifierWorker"]
