"""The generator's side of the weight sync.

``SyncClient`` owns this generator's view of it: the epoch it joined, the policy version it
serves, the learner's version (from the same Redis read), the last error. Each ``poll`` (the
worker calls it between engine calls) joins a new epoch that names this generator, notices an
epoch that left it out (it was dropped, e.g. while hung: it leaves the old group and waits to be
taken back, which the learner does once it sees its heartbeat again), and loads a pushed
version. ``behind`` says when the served version is older than the run accepts; the worker then
takes no tasks and ``/readyz`` is not ready, so stale weights never sample.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from common.transport.weight_sync import SyncBoard
from generator.engines import Engine

log = logging.getLogger(__name__)


class SyncClient:
    def __init__(self, board: SyncBoard, engine: Engine, member_id: str, max_lag: int = 1):
        self.board, self.engine, self.member_id = board, engine, member_id
        self.max_lag = max(1, max_lag)  # 1: a push announced and not loaded yet is normal
        self.epoch: int | None = None
        self.joined = False
        self.dropped_at: int | None = None  # the epoch that left this generator out
        self.version = 0
        self.latest_version = 0
        self.learner_version = 0
        self.last_error = ""
        self.last_seconds = 0.0
        self.last_timing: dict[str, float] = {}
        self.syncs = {"ok": 0, "error": 0}

    @property
    def lag(self) -> int:
        return max(0, self.learner_version - self.version)

    def behind(self) -> str:
        """Why this generator must not sample now ('' when it may)."""
        if self.lag <= self.max_lag:
            return ""
        why = f"serving policy version {self.version}, the learner is at {self.learner_version}"
        if self.dropped_at is not None:
            why += f" (left out of weight-sync epoch {self.dropped_at}; waiting to rejoin)"
        return why

    def poll(self) -> float | None:
        """Join a new epoch and/or load a pushed version; returns the load time if it loaded."""
        state = self.board.read()
        self.learner_version = state.policy_version
        epoch, push = state.epoch, state.push
        if epoch and epoch.epoch != self.epoch:
            if self.member_id in epoch.ranks:
                self._join(epoch)
            elif self.dropped_at != epoch.epoch:
                self._dropped(epoch.epoch)
        if push is None:
            return None
        self.latest_version = max(self.latest_version, push.version)
        if self.joined and push.epoch == self.epoch and push.version > self.version:
            return self._load(push)
        return None

    def _dropped(self, epoch: int) -> None:
        if self.joined:
            log.warning(
                "weight-sync epoch %d left this generator out (it was in epoch %s): leaving the "
                "group until the learner takes it back",
                epoch,
                self.epoch,
            )
            self.engine.leave_weight_group()
        self.joined, self.dropped_at = False, epoch

    def _join(self, epoch: Any) -> None:
        self.epoch = epoch.epoch  # one attempt per epoch: a failed one waits for the next
        first = epoch.ranks[self.member_id][0]
        try:
            self.engine.join_weight_group(epoch.spec(), first)
        except Exception as exc:
            self.joined, self.last_error = False, f"join epoch {epoch.epoch}: {exc}"
            log.warning("could not join weight-sync epoch %d: %s", epoch.epoch, exc)
            return
        self.joined, self.last_error, self.dropped_at = True, "", None
        log.info("joined weight-sync epoch %d as rank %d", epoch.epoch, first)

    def _load(self, push: Any) -> float | None:
        try:
            timing = self.engine.receive_weights(push.buckets)
        except Exception as exc:
            self.joined = False  # the group is broken; the learner starts a new epoch
            self.syncs["error"] += 1
            self.last_error = f"sync to version {push.version} failed: {exc}"
            self.board.ack(push.version, push.epoch, self.member_id, False, str(exc))
            log.warning("%s; still serving version %d", self.last_error, self.version)
            return None
        self.last_seconds = timing["total_s"]
        self.last_timing = timing
        self.version, self.last_error = push.version, ""
        self.engine.label_version(push.version)
        self.syncs["ok"] += 1
        self.board.ack(push.version, push.epoch, self.member_id, True, json.dumps(timing))
        log.info(
            "loaded policy version %d in %.3fs (transfer %.3fs)",
            push.version,
            timing["total_s"],
            timing["transfer_s"],
        )
        return self.last_seconds

    def status(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "joined": self.joined,
            "dropped_at_epoch": self.dropped_at,
            "learner_version": self.learner_version,
            "lag": self.lag,
            "last_seconds": self.last_seconds,
            "last_error": self.last_error,
            **self.syncs,
        }


__all__ = ["SyncClient"]
