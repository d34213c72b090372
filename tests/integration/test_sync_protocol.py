"""The weight-sync group protocol on its own: ranks in threads of this process over loopback.

``gloo-lazy`` connects at the first collective, as NCCL does; the protocol (an eager, timed
connect at join; timed waits; abort) must fail the same way on it as on eager gloo, so the
learner's join/exclude/retry logic holds on GPU too.
"""

import threading
import time

import pytest
import torch

from common.transport.weight_sync import (
    GroupSpec,
    SyncGroup,
    SyncTimeout,
    create_group,
    host_store,
    joined_ranks,
)

TIMEOUT_S = 2.0
BACKENDS = ["gloo", "gloo-lazy"]


def epoch(backend, world=2):
    store, port = host_store("127.0.0.1", 0, world, TIMEOUT_S)
    return store, GroupSpec(1, "127.0.0.1", port, world, backend, TIMEOUT_S)


def in_thread(fn):
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except Exception as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_member_that_never_joins_fails_the_connect_within_the_timeout(backend):
    store, spec = epoch(backend)
    started = time.monotonic()
    with pytest.raises(SyncTimeout, match="epoch 1: not every rank"):
        create_group(spec, 0, store)
    assert time.monotonic() - started < TIMEOUT_S + 3
    assert joined_ranks(store, 1, 2) == [0]  # rank 1 is the one to exclude


def test_the_lazy_stand_in_builds_without_its_peers_as_nccl_does():
    store, spec = epoch("gloo-lazy")
    started = time.monotonic()
    group = SyncGroup(spec, 0, store)  # returns at once: nobody else is there
    assert time.monotonic() - started < 0.5 and not group.connected
    with pytest.raises(SyncTimeout):
        group.connect()  # the warm-up collective is what finds out


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_receiver_returns_with_the_data_and_raises_when_the_sender_is_gone(backend):
    store, spec = epoch(backend)
    received = torch.zeros(1000)

    def receiver():
        _, group = create_group(spec, 1)
        group.broadcast(received, root=0)
        snapshot = received.clone()
        started = time.monotonic()
        try:
            group.broadcast(received, root=0)  # the sender never sends this one
        except SyncTimeout as exc:
            return snapshot, time.monotonic() - started, str(exc)
        return snapshot, time.monotonic() - started, ""

    thread, out = in_thread(receiver)
    _, sender = create_group(spec, 0, store)
    sender.broadcast(torch.arange(1000.0), root=0)
    thread.join(TIMEOUT_S + 10)
    assert not thread.is_alive(), "a receiver waiting on a dead sender must not hang"
    snapshot, waited, error = out["value"]
    assert torch.equal(snapshot, torch.arange(1000.0))  # in place when broadcast returned
    assert "did not finish within" in error and waited < TIMEOUT_S + 3
    sender.abort()
    assert not sender.connected
    with pytest.raises(RuntimeError, match="before connect"):
        sender.start_broadcast(torch.zeros(1))
