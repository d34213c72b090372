"""Weight broadcaster: the learner's side (rank 0) of the weight-sync group.

``WeightBroadcaster`` owns the epoch (store, group, member ranks), the set of members it
is excluding after a failure and, on CPU, the send buffers kept between pushes.
``push(version, tensors)`` makes sure the group matches the live generators (a new epoch only
when membership changed), publishes the bucket layout, broadcasts every bucket, waits for
acks, and only then sets ``policy_version``. A member that fails to join or never acks is
dropped from the next epochs for a while; a push broken by a dying member is retried once with
the others; the learner goes on either way.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from common.config import SyncConfig
from common.membership import list_members
from common.transport.weight_sync import (
    CpuBuffers,
    EpochRecord,
    GroupSpec,
    PushRecord,
    SyncBoard,
    buckets_to_wire,
    create_group,
    host_store,
    joined_ranks,
    pack_bucket,
    plan_buckets,
    resolve_backend,
)

log = logging.getLogger(__name__)
ERROR_ACK_WAIT_S = 5.0


@dataclass
class SyncResult:
    version: int
    ok: bool
    seconds: float
    members: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    bytes: int = 0


class Heartbeats:
    """Which sync members stopped heartbeating: their membership record is gone, or its last
    beat is older than ``stale_after_s`` (a SIGSTOPped or wedged process stops beating)."""

    def __init__(self, board: SyncBoard, role: str, stale_after_s: float):
        self.board, self.role, self.stale_after_s = board, role, stale_after_s
        self._next_check, self._stopped = 0.0, []

    def stopped(self, members: Iterable[str]) -> list[str]:
        members = sorted(members)
        if not members:
            return []
        keys = [self.board.keys.member(self.role, m) for m in members]
        raws = self.board.redis.call(self.board.redis.client.mget, keys)
        limit = time.time() - self.stale_after_s
        return [m for m, raw in zip(members, raws, strict=True) if not raw or _beat(raw) < limit]

    def forget(self) -> None:
        """Drop the cached reading (a new push starts with a fresh one)."""
        self._next_check, self._stopped = 0.0, []

    def stopped_now(self, members: Iterable[str]) -> list[str]:
        """``stopped``, read at most twice a second (it is polled during transfers)."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check, self._stopped = now + 0.5, self.stopped(members)
        return self._stopped


def _beat(raw: bytes) -> float:
    try:
        return float(json.loads(raw).get("time", 0.0))
    except (ValueError, AttributeError):
        return 0.0


class WeightBroadcaster:
    def __init__(
        self,
        board: SyncBoard,
        cfg: SyncConfig,
        role: str = "generator",
        heartbeat_s: float = 2.0,
        address: str | None = None,
    ):
        self.board, self.cfg, self.role = board, cfg, role
        self.address = address or cfg.host  # what generators connect to (sync.advertise_host)
        self.backend = resolve_backend(cfg.backend)
        self.epoch = self._last_epoch()
        self.members: dict[str, list[int]] = {}
        self.excluded: dict[str, float] = {}  # member -> until (monotonic): it failed a sync
        self.silent: dict[str, float] = {}  # member -> when (wall) it stopped heartbeating
        self.beats = Heartbeats(board, role, 3 * heartbeat_s)
        self._announced: tuple[int, int] = (0, 0)  # (version, epoch) of the push on the wire
        self._next_push_check = 0.0
        self._store: Any = None
        self._group: Any = None
        self._buffers = CpuBuffers()  # send buffers on CPU (gloo)

    def _last_epoch(self) -> int:
        """The newest epoch anyone knows: the record, or what generators report (Redis may
        have lost the record; a new epoch must not reuse a number they still hold)."""
        record = self.board.read().epoch
        members = list_members(self.board.redis, self.board.keys, self.role)
        known = [int(m.get("sync_epoch") or 0) for m in members]
        return max([record.epoch if record else 0, *known])

    # ---------------------------------------------------------------- membership

    def live_members(self) -> dict[str, int]:
        """Live generators able to sync, minus recently failed ones and those that went silent
        and have not beaten since: id -> ranks they need."""
        now = time.monotonic()
        self.excluded = {m: until for m, until in self.excluded.items() if until > now}
        out = {}
        for record in list_members(self.board.redis, self.board.keys, self.role):
            member, ranks = str(record["id"]), int(record.get("sync_ranks") or 0)
            if member in self.silent and float(record.get("time", 0.0)) > self.silent[member]:
                log.info("%s heartbeats again: it rejoins at the next epoch", member)
                del self.silent[member]
            if ranks > 0 and member not in self.excluded and member not in self.silent:
                out[member] = ranks
        return out

    def newcomers(self) -> list[str]:
        """Live generators outside the current epoch (one came back after being dropped, or
        a new one started): they serve nothing until a push brings them in."""
        return sorted(set(self.live_members()) - set(self.members))

    def ensure_epoch(self) -> bool:
        """Rebuild the group if the live membership changed; False if nobody is there."""
        live = self.live_members()
        current = {m: r[1] for m, r in self.members.items()}
        if live == current and (self._group is not None or not live):
            return bool(live)
        self._close_group()
        if not live:
            self.members = {}
            return False
        self._new_epoch(live)
        return self._group is not None

    def _new_epoch(self, live: dict[str, int]) -> None:
        self.epoch += 1
        ranks, nxt = {}, 1
        for member in sorted(live):
            ranks[member] = [nxt, live[member]]
            nxt += live[member]
        store, port = host_store(self.cfg.host, self.cfg.port, nxt, self.cfg.timeout_s)
        spec = GroupSpec(self.epoch, self.address, port, nxt, self.backend, self.cfg.timeout_s)
        self.board.publish_epoch(EpochRecord(**vars(spec), ranks=ranks))
        log.info("weight-sync epoch %d: %d members, world %d", self.epoch, len(ranks), nxt)
        try:
            _, group = create_group(spec, 0, store)
        except Exception as exc:  # SyncTimeout: some member never joined or never connected
            arrived = set(joined_ranks(store, self.epoch, nxt))
            missing = [m for m, (first, _) in ranks.items() if first not in arrived]
            log.warning("epoch %d failed (%s); excluding %s", self.epoch, exc, missing)
            self._exclude(missing)
            self.members, self._store = {}, None
            return
        self.members, self._store, self._group = ranks, store, group

    def _exclude(self, members: Iterable[str]) -> None:
        until = time.monotonic() + 2 * self.cfg.timeout_s
        for member in members:
            self.excluded[member] = until

    def _close_group(self) -> None:
        if self._group is not None:
            self._group.abort()  # NCCL keeps a dropped communicator alive
        self._group, self._store = None, None

    # ---------------------------------------------------------------- push

    def push(self, version: int, tensors: Iterable[tuple[str, Any]]) -> SyncResult:
        """Broadcast ``tensors`` (full, unsharded) as ``version``; set policy_version on success.

        A member that dies mid-broadcast fails the collective for every rank: the live members
        ack the failure, the silent one is dropped, and the push is tried once more with the
        rest (a new epoch), all within ``sync.timeout_s``."""
        started = time.perf_counter()
        named = dict(tensors)
        result = self._attempt(version, named, started)
        if not result.ok and result.failed and time.perf_counter() - started < self.cfg.timeout_s:
            log.info("retrying push %d without %s", version, sorted({*self.excluded, *self.silent}))
            retry = self._attempt(version, named, started)
            retry.failed = {**result.failed, **retry.failed}
            result = retry
        return result

    def _attempt(self, version: int, named: dict[str, Any], started: float) -> SyncResult:
        self.beats.forget()
        if not self.ensure_epoch():
            self.board.set_policy_version(version)
            return SyncResult(version, True, time.perf_counter() - started)
        specs = [(n, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in named.items()]
        buckets = plan_buckets(specs, self.cfg.bucket_mb * 1024 * 1024)
        # Receivers never wait on packing: on GPU the first bucket is packed before the
        # announcement and each next one while the previous is on the wire; on CPU all are
        # packed up front, because packing alongside the transfer competed with it for the same
        # cores and memory bandwidth (transfer 1.3x slower, measured in bench/generator.py).
        if self.backend != "nccl":
            flats = iter(
                [pack_bucket(b, named, out=self._buffers.get(i, b)) for i, b in enumerate(buckets)]
            )
        else:  # a generator: each bucket is packed when the loop asks for it
            flats = (pack_bucket(b, named, self._device()) for b in buckets)
        flat = next(flats)
        self.board.publish_push(PushRecord(version, self.epoch, buckets_to_wire(buckets)))
        self._announced, self._next_push_check = (version, self.epoch), time.monotonic() + 0.5
        sent = 0
        deadline, broken = started + self.cfg.timeout_s, False
        try:
            while flat is not None:
                work = self._group.start_broadcast(flat, root=0)
                nxt = next(flats, None)
                self._group.finish(work, deadline - time.perf_counter(), self._gone)
                sent += flat.numel() * flat.element_size()
                flat = nxt
        except Exception as exc:
            log.warning("weight push %d failed during broadcast: %s", version, exc)
            broken = True
        work = None  # outside the except block: no traceback or work holds the group now,
        if broken:  # so aborting it closes its connections and receivers still waiting fail
            self._close_group()  # fast and ack the failure
        return self._finish(version, started, sent, broken=broken)

    def _gone(self) -> str:
        """Why waiting for the current broadcast is pointless: a member stopped heartbeating,
        or the push announcement vanished (Redis lost the run's state: no receiver will ever
        read it). Checked at most twice a second."""
        stopped = self.beats.stopped_now(self.members)
        if stopped:
            return f"members stopped heartbeating: {stopped}"
        now = time.monotonic()
        if now >= self._next_push_check:
            self._next_push_check = now + 0.5
            push = self.board.read().push
            if push is None or (push.version, push.epoch) != self._announced:
                return "the push announcement is gone from Redis (it lost the run's state?)"
        return ""

    def _device(self) -> Any:
        import torch

        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else None

    def _finish(self, version: int, started: float, sent: int, broken: bool) -> SyncResult:
        deadline = started + self.cfg.timeout_s
        if broken:  # live members report a failed collective within seconds; the dead never
            deadline = min(deadline, time.perf_counter() + ERROR_ACK_WAIT_S)
        acks = self._wait_acks(version, deadline)
        ok_members = [m for m in self.members if acks.get(m, {}).get("ok")]
        failed = {
            m: acks.get(m, {}).get("detail") or "no ack"
            for m in self.members
            if m not in ok_members
        }
        silent = [m for m in self.members if m not in acks]
        if failed:
            log.warning("weight push %d: members failed: %s", version, failed)
        gone = set(self.beats.stopped(silent))
        for member in gone:  # hung or dead: left out until it heartbeats again
            self.silent[member] = time.time()
        self._exclude([m for m in silent if m not in gone])  # alive but mute: for a while
        if broken or failed:
            self._close_group()  # the next push starts a new epoch
            self.members = {}
        ok = bool(ok_members)
        if ok:
            self.board.set_policy_version(version)
        return SyncResult(version, ok, time.perf_counter() - started, ok_members, failed, sent)

    def _wait_acks(self, version: int, deadline: float) -> dict[str, dict]:
        """Acks of this push, waiting for every member that still heartbeats."""
        while True:
            acks = self.board.acks(version, self.epoch)
            waiting = [m for m in self.members if m not in acks]
            if not waiting or time.perf_counter() > deadline:
                return acks
            if set(waiting) <= set(self.beats.stopped_now(waiting)):
                log.warning("push %d: not waiting for %s (no heartbeat)", version, waiting)
                return acks
            time.sleep(0.01)  # acks are written right after the receivers' loads finish


__all__ = ["SyncResult", "WeightBroadcaster"]
