import json
import time

import torch

from common.config import SyncConfig
from common.transport import Keys
from common.transport.weight_sync import SyncBoard
from learner.broadcast import WeightBroadcaster


def test_a_member_that_never_joins_is_dropped_and_the_learner_goes_on(run_name, resilient, rclient):
    keys = Keys(run_name)
    # a generator that registered (sync capable) and then hung: it will never join the group
    record = {"role": "generator", "id": "ghost", "sync_ranks": 1, "port": 1}
    rclient.set(keys.member("generator", "ghost"), json.dumps(record), ex=60)
    broadcaster = WeightBroadcaster(SyncBoard(resilient, keys), SyncConfig(timeout_s=2.0))
    started = time.monotonic()
    result = broadcaster.push(1, {"w": torch.ones(4)}.items())
    elapsed = time.monotonic() - started
    assert elapsed < 10, elapsed  # bounded by the sync timeout, never a hang
    assert "ghost" in broadcaster.excluded
    assert result.ok and result.members == []  # nobody left to sync: the version still moves
    assert SyncBoard(resilient, keys).policy_version() == 1
    # excluded members stay out of the next pushes until their exclusion ends
    started = time.monotonic()
    assert broadcaster.push(2, {"w": torch.ones(4)}.items()).ok
    assert time.monotonic() - started < 1.0
