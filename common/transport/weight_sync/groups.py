"""One epoch's weight-sync process group on one rank, with the same protocol on every backend.

The groups are "stateless": built from the epoch's TCPStore directly, never the default
process group, so they coexist with the one vLLM creates for itself. The learner (rank 0)
hosts the store (``host_store``); every rank builds its ``SyncGroup`` (``create_group``).

Backends differ where it matters for failures, so ``SyncGroup`` makes them behave alike:
- gloo connects every pair while the group is built; NCCL connects lazily inside the first
  collective. So every rank calls ``connect`` right after joining: a warm-up all-reduce waited
  with the epoch's timeout. A member that never arrives fails the connect on every rank within
  ``timeout_s``, on any backend (``joined_ranks`` then names who was missing).
- NCCL's ``wait()`` only makes the current CUDA stream wait; it returns before the data is
  there. Every wait here passes a timeout, which blocks the host until the collective is done
  or raises, so a receiver acks only after its data arrived and a dead peer never hangs one.
- Dropping references does not tear down an NCCL communicator: on a failure the rank calls
  ``abort`` (NCCL's abort; for gloo, releasing the group, which closes its connections).
- ``gloo-lazy`` is gloo built at ``connect`` instead of at join: the CPU stand-in for NCCL's
  lazy connect, which lets the tests run this protocol where no GPU is.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from common.net import route_address

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
BACKENDS = ("gloo", "nccl", "gloo-lazy")


class SyncTimeout(RuntimeError):
    """A sync-group operation did not finish within its time limit (a peer is dead or hung)."""


@dataclass(frozen=True)
class GroupSpec:
    """Everything a rank needs to join one epoch's group."""

    epoch: int
    host: str
    port: int
    world_size: int
    backend: str
    timeout_s: float


def resolve_backend(backend: str) -> str:
    """``auto`` -> nccl when CUDA is available, else gloo."""
    if backend != "auto":
        return backend
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def host_store(host: str, port: int, world_size: int, timeout_s: float):
    """The TCPStore rank 0 hosts (``port`` 0 picks a free one); returns ``(store, port)``."""
    import torch.distributed as dist

    store = dist.TCPStore(
        host,
        port,
        world_size,
        is_master=True,
        timeout=timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )
    return store, store.port


def _epoch_store(store: Any, epoch: int) -> Any:
    import torch.distributed as dist

    return dist.PrefixStore(f"luffy/epoch{epoch}", store)


def joined_ranks(store: Any, epoch: int, world_size: int) -> list[int]:
    """Ranks of ``epoch`` that reached ``create_group`` (see the marker it sets)."""
    prefixed = _epoch_store(store, epoch)
    return [r for r in range(world_size) if prefixed.check([f"joined/{r}"])]


class SyncGroup:
    """This rank's member of one epoch's group; every operation is bounded by a timeout."""

    def __init__(self, spec: GroupSpec, rank: int, store: Any):
        import torch

        if spec.backend not in BACKENDS:
            raise ValueError(f"unknown weight-sync backend {spec.backend!r}; known: {BACKENDS}")
        self.spec, self.rank, self.store = spec, rank, store
        self.prefixed = _epoch_store(store, spec.epoch)
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if spec.backend == "nccl"
            else torch.device("cpu")
        )
        self._pg: Any = None if spec.backend == "gloo-lazy" else self._build()
        self.connected = False

    def _build(self) -> Any:
        import torch.distributed as dist

        timeout = timedelta(seconds=self.spec.timeout_s)
        if self.spec.backend == "nccl":
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout  # the default is 10 minutes, whatever sync.timeout_s says
            return dist.ProcessGroupNCCL(self.prefixed, self.rank, self.spec.world_size, options)
        options = dist.ProcessGroupGloo._Options()
        options._timeout = timeout
        # gloo's default device binds the address this host's name resolves to, which on
        # another machine (a pod, a network namespace) may not be the one peers can reach:
        # bind the address on our route to the store's host instead
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=self.local_address())]
        return dist.ProcessGroupGloo(self.prefixed, self.rank, self.spec.world_size, options)

    def local_address(self) -> str:
        """This rank's address on its route to the epoch's store (the learner's host)."""
        try:
            return route_address(self.spec.host, self.spec.port)
        except OSError:  # no route yet: let gloo resolve this host's name as it would
            return socket.gethostname()

    def connect(self) -> None:
        """Connect every rank now (a warm-up all-reduce of one element); raises
        ``SyncTimeout`` when some rank does not take part within the epoch's timeout."""
        import torch

        started = time.perf_counter()
        probe = torch.ones(1, device=self.device)
        try:
            if self._pg is None:
                self._pg = self._build()
            error = _wait(self._pg.allreduce([probe]), self.spec.timeout_s)
        except Exception as exc:
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
        if error:
            self.abort()
            raise SyncTimeout(
                f"epoch {self.spec.epoch}: not every rank connected within "
                f"{self.spec.timeout_s:.0f}s ({error})"
            )
        if int(probe.item()) != self.spec.world_size:
            raise SyncTimeout(f"epoch {self.spec.epoch}: warm-up saw {int(probe.item())} ranks")
        self.connected = True
        took = time.perf_counter() - started
        log.info("sync epoch %d: rank %d connected in %.2fs", self.spec.epoch, self.rank, took)

    def start_broadcast(self, tensor: torch.Tensor, root: int = 0) -> Any:
        """Start broadcasting ``tensor`` from ``root``; ``finish`` the returned work."""
        import torch.distributed as dist

        if not self.connected:
            raise RuntimeError(f"epoch {self.spec.epoch}: broadcast before connect")
        opts = dist.BroadcastOptions()
        opts.rootRank = root
        return self._pg.broadcast([tensor], opts)

    def finish(
        self,
        work: Any,
        timeout_s: float | None = None,
        give_up: Callable[[], str] | None = None,
    ) -> None:
        """Block the host until ``work`` is done (data in place) or raise ``SyncTimeout``.
        ``give_up`` (polled while waiting) returns a reason to stop waiting early, e.g. a
        peer that stopped heartbeating: a hung peer then costs seconds, not the timeout."""
        limit = self.spec.timeout_s if timeout_s is None else timeout_s
        deadline = time.perf_counter() + limit
        error = ""
        while give_up is not None and not work.is_completed():
            error = give_up()
            if error or time.perf_counter() > deadline:
                break
            time.sleep(0.002)
        if not error:
            error = _wait(work, max(deadline - time.perf_counter(), 0.001))
        del work  # see abort: nothing may keep the group alive once this raises
        if error:
            raise SyncTimeout(
                f"epoch {self.spec.epoch}: a broadcast did not finish within {limit:.1f}s ({error})"
            )

    def broadcast(self, tensor: torch.Tensor, root: int = 0, timeout_s: float | None = None):
        self.finish(self.start_broadcast(tensor, root), timeout_s)

    def abort(self) -> None:
        """Tear the communicator down now. NCCL: ``abort()`` (a dropped communicator stays
        alive). gloo closes its connections when its last reference goes, and its peers then
        fail at once (measured: 0.5 s; after ``abort()`` they waited for their timeout), so
        here it is only released: callers must not keep works or tracebacks of it."""
        self.connected = False
        box, self._pg = [self._pg], None
        if box[0] is None:
            return
        if self.spec.backend == "nccl":
            with contextlib.suppress(Exception):
                box[0].abort()
        # The last reference goes on a thread of its own: destroying a gloo group waits for the
        # collectives still in flight, and a send to a hung (not dead) peer runs until its
        # timeout (seen: a push held 60 s by a SIGSTOPped member after it had given up on it).
        threading.Thread(target=box.clear, name="sync-group-release", daemon=True).start()


def _wait(work: Any, timeout_s: float) -> str:
    """Wait for ``work``; returns why it failed ('' when done). Never raises: an exception
    raised here would keep ``work``, and so the group, alive in a frame cycle of its traceback
    until the garbage collector runs (gloo's peers would wait for their timeout meanwhile)."""
    try:
        # an explicit timeout makes wait() block the host on every backend (NCCL's plain
        # wait only orders the current stream after the collective)
        done = work.wait(timedelta(seconds=timeout_s))
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return "" if done else f"not finished after {timeout_s:.1f}s"


def create_group(spec: GroupSpec, rank: int, store: Any = None) -> tuple[Any, SyncGroup]:
    """Join the epoch's group as ``rank`` (rank 0 passes the TCPStore it hosts) and connect it
    (see ``SyncGroup.connect``). Returns ``(store, group)``; raises ``SyncTimeout`` when not
    every rank connects within ``spec.timeout_s``."""
    import torch.distributed as dist

    if store is None:
        store = dist.TCPStore(
            spec.host,
            spec.port,
            spec.world_size,
            is_master=False,
            timeout=timedelta(seconds=spec.timeout_s),
        )
    # lets rank 0 name the ranks that never arrived when the connect times out
    _epoch_store(store, spec.epoch).set(f"joined/{rank}", "1")
    try:
        group = SyncGroup(spec, rank, store)  # gloo connects every pair here
    except ValueError:
        raise
    except Exception as exc:
        raise SyncTimeout(
            f"epoch {spec.epoch}: not every rank joined within {spec.timeout_s:.0f}s "
            f"({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc
    group.connect()
    return store, group


__all__ = [
    "BACKENDS",
    "GroupSpec",
    "SyncGroup",
    "SyncTimeout",
    "create_group",
    "host_store",
    "joined_ranks",
    "resolve_backend",
]
