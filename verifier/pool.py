"""A scoring pool with a hard time limit per job, usable from any thread.

Parts and ownership:
- worker processes (``_worker_main``): each owns one duplex pipe and scores one job at a time
  in its main thread. They are forked from a forkserver that has already imported and warmed
  math-verify, so a replacement is ready in milliseconds, not seconds.
- the dispatcher thread (``ScoringPool._run``): owns the slots (process, pipe, current job and
  its deadline) and the queue of waiting jobs. It hands jobs to idle workers, collects results,
  and SIGKILLs a worker that overruns its deadline (the job's verdict is ``timeout``) or that
  died (``error``), starting a replacement either way.
- callers hold only ``Future[Verdict]`` objects from ``submit``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from verifier.rewards import Verdict, make_reward

log = logging.getLogger(__name__)
_PRELOAD = ["verifier.warm"]


def _worker_main(conn: Connection) -> None:
    """Score jobs until the pipe closes. Runs in the worker's main thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        reward, response, gold, think_tags = msg
        try:
            verdict = make_reward(reward)(response, gold, think_tags)
            if not isinstance(verdict, Verdict):
                raise TypeError(f"reward {reward!r} returned {type(verdict).__name__}, not Verdict")
        except BaseException as exc:  # a reward fn must never take the worker down silently
            verdict = Verdict(0.0, "error", "", f"{type(exc).__name__}: {str(exc)[:200]}")
        conn.send((verdict.reward, verdict.status, verdict.extracted, verdict.detail))


@dataclass
class _Job:
    msg: tuple
    future: Future
    submitted: float = field(default_factory=time.monotonic)


@dataclass
class _Slot:
    process: mp.process.BaseProcess
    conn: Connection
    job: _Job | None = None
    started: float = 0.0
    deadline: float = 0.0


@dataclass
class PoolStats:
    completed: int = 0
    timeouts: int = 0
    crashes: int = 0
    restarts: int = 0
    overflow_spawned: int = 0


class ScoringPool:
    """``submit`` returns a future; each job gets at most ``timeout_s`` of a worker.
    ``preload``: modules the forkserver imports once (the configured reward plugin's), so
    workers forked from it start with them loaded (forkserver only; the first pool of a process
    decides, as the forkserver starts once)."""

    def __init__(
        self,
        workers: int,
        timeout_s: float,
        start_method: str = "forkserver",
        stall_s: float = 1.0,
        preload: Sequence[str] = (),
    ):
        if workers < 1:
            raise ValueError("a scoring pool needs at least one worker")
        self.workers = workers
        self.timeout_s = timeout_s
        # When every worker has been busy longer than this (a typical job takes 1-40 ms) while
        # jobs wait, an extra worker starts so slow answers do not hold up the others.
        self.stall_s = min(stall_s, timeout_s)
        self.stats = PoolStats()
        self._ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            # a plugin's module too: otherwise every fresh worker (one per timeout) would import
            # it on its first job, inside that job's time limit
            self._ctx.set_forkserver_preload([*_PRELOAD, *preload])
        self._queue: deque[_Job] = deque()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        self._closed = False
        self._slots = [self._spawn() for _ in range(workers)]
        self._thread = threading.Thread(target=self._run, name="scoring-pool", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- public

    def submit(self, reward: str, response: str, gold: str, think_tags: bool) -> Future:
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("scoring pool is closed")
            self._queue.append(_Job((reward, response, gold, think_tags), future))
        self._wake_w.send_bytes(b"!")
        return future

    def alive_workers(self) -> int:
        return sum(1 for slot in self._slots if slot.process.is_alive())

    def close(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake_w.send_bytes(b"!")
        self._thread.join(timeout_s)
        for slot in self._slots:
            self._stop_worker(slot)
        for job in list(self._queue):
            job.future.cancel()

    # ---------------------------------------------------------------- dispatcher

    def _spawn(self) -> _Slot:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_worker_main, args=(child,), daemon=True)
        process.start()
        child.close()
        return _Slot(process, parent)

    def _stop_worker(self, slot: _Slot) -> None:
        with contextlib.suppress(OSError, ValueError):
            slot.conn.send(None)
        slot.process.join(1.0)
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join()
        slot.conn.close()

    def _run(self) -> None:
        while not self._closed:
            self._assign()
            self._add_overflow_worker()
            busy = [s for s in self._slots if s.job is not None]
            ready = wait([self._wake_r, *(s.conn for s in busy)], self._next_timer(busy))
            if self._wake_r in ready:
                while self._wake_r.poll():
                    self._wake_r.recv_bytes()
            for slot in busy:
                if slot.conn in ready:
                    self._collect(slot)
            self._expire_overdue()

    def _next_timer(self, busy: list[_Slot]) -> float | None:
        """Seconds until the next deadline (or stall check, when jobs are waiting)."""
        if not busy:
            return None
        times = [s.deadline for s in busy]
        if self._queue and len(self._slots) < 2 * self.workers:
            times += [s.started + self.stall_s for s in busy]
        return max(0.0, min(times) - time.monotonic())

    def _add_overflow_worker(self) -> None:
        if not self._queue or len(self._slots) >= 2 * self.workers:
            return
        now = time.monotonic()
        if all(s.job is not None and now - s.started >= self.stall_s for s in self._slots):
            self._slots.append(self._spawn())
            self.stats.overflow_spawned += 1
            self._assign()

    def _retire_overflow(self, slot: _Slot) -> None:
        """Drop an idle extra worker once nothing waits."""
        if len(self._slots) > self.workers and not self._queue and slot.job is None:
            self._slots.remove(slot)
            self._stop_worker(slot)

    def _assign(self) -> None:
        for slot in list(self._slots):
            if slot.job is not None:
                continue
            with self._lock:
                if not self._queue:
                    return
                job = self._queue.popleft()
            if not job.future.set_running_or_notify_cancel():
                continue
            slot.job, slot.started = job, time.monotonic()
            slot.deadline = slot.started + self.timeout_s
            try:
                slot.conn.send(job.msg)
            except (OSError, ValueError) as exc:
                self._replace(slot, Verdict(0.0, "error", "", f"worker unreachable: {exc}"))

    def _collect(self, slot: _Slot) -> None:
        try:
            reward, status, extracted, detail = slot.conn.recv()
        except (EOFError, OSError):
            code = slot.process.exitcode
            self.stats.crashes += 1
            log.warning("scoring worker %s died (exit %s)", slot.process.pid, code)
            self._replace(slot, Verdict(0.0, "error", "", f"scoring worker died (exit {code})"))
            return
        job, slot.job = slot.job, None
        self.stats.completed += 1
        job.future.set_result(Verdict(reward, status, extracted, detail))
        self._retire_overflow(slot)

    def _expire_overdue(self) -> None:
        now = time.monotonic()
        for slot in list(self._slots):
            if slot.job is not None and now >= slot.deadline:
                self.stats.timeouts += 1
                detail = f"verification exceeded {self.timeout_s:g}s; worker replaced"
                self._replace(slot, Verdict(0.0, "timeout", "", detail))

    def _replace(self, slot: _Slot, verdict: Verdict) -> None:
        """Kill the slot's worker, fail its job with ``verdict``, start a fresh worker."""
        job = slot.job
        if slot.process.is_alive():
            os.kill(slot.process.pid, signal.SIGKILL)
        slot.process.join()
        slot.conn.close()
        slot.job = None
        if len(self._slots) > self.workers and not self._queue:
            self._slots.remove(slot)  # an extra worker that is no longer needed
        else:
            fresh = self._spawn()
            slot.process, slot.conn = fresh.process, fresh.conn
            self.stats.restarts += 1
        if job is not None:
            job.future.set_result(verdict)


__all__ = ["PoolStats", "ScoringPool"]
