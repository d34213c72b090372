"""Generators and a verifier on hosts of their own (network namespaces linked by veth pairs,
``tests.integration.netns``), reaching Redis (password required) and the learner over real
addresses, as separate pods would; every REST server that binds a non-loopback address has a
token.

- Rollouts flow, and the learner's weights reach the remote generators over gloo (their
  policy version follows the learner's).
- Addresses are what peers can reach: a generator bound to its own address publishes it, one
  bound to 0.0.0.0 publishes its address on the route to Redis, and /status answers there.
- Host 1's link is cut while it holds tasks: the learner drops it at its next sync and trains
  on, the other generator reclaims its tasks; when the link returns it rejoins the weight
  sync and catches up. The run loses nothing (every fed task trained once or in flight).
"""

import json
import os
import signal
import subprocess
import time

import httpx
import pytest
import redis

from common.config import RedisConfig
from common.membership import list_members
from common.net import free_port
from common.transport import Keys, Resilient
from common.transport.weight_sync import SyncBoard
from tests.integration.helpers import spawn, stop_services, wait_for
from tests.integration.netns import NetHosts, netns_available
from tests.integration.test_chaos import account
from tests.integration.test_learner_service import learner_args, write_task

PASSWORD, TOKEN = "redis-pass-for-the-test", "token-for-the-test"
SECRETS = {"LUFFY_REDIS__PASSWORD": PASSWORD, "LUFFY_SERVICES__TOKEN": TOKEN}

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="network namespaces need root (CI runs as root)"
)


@pytest.fixture
def hosts():
    why = netns_available()
    assert not why, why  # CI's machine can: a failure here is a broken setup, not a skip
    with NetHosts(count=3) as made:
        yield made


@pytest.fixture
def server_redis(hosts, tmp_path):
    """A Redis of the test's own on loopback and the servers' address, password required."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    config = (
        f"bind 127.0.0.1 {hosts.server}\nport {port}\nrequirepass {PASSWORD}\n"
        f'save ""\nappendonly no\ndir {tmp_path}\n'
    )
    proc.stdin.write(config.encode())
    proc.stdin.close()
    client = redis.Redis(port=port, password=PASSWORD)
    wait_for(lambda: _pings(client), 20, "the test's redis-server")
    yield port
    proc.terminate()
    proc.wait(10)


def _pings(client):
    try:
        return client.ping()
    except redis.RedisError:
        return False


def remote(hosts, i, role, url, run, tmp_path, model_dir, *extra):
    common = [
        "--redis.url", url, "--run.name", run, "--run.output_dir", str(tmp_path),
        "--model.path", str(model_dir), "--redis.heartbeat_ttl_s", "4",
        "--redis.heartbeat_interval_s", "1", "--redis.claim_idle_ms", "3000",
        "--redis.reconnect_max_s", "1", "--redis.socket_timeout_s", "3",
    ]  # fmt: skip
    return hosts.spawn(i, "-m", f"services.{role}", *common, *extra, env=SECRETS)


def generator_args(name, bind):
    return [
        "--generator.id", name, "--generator.engine", "hf", "--generator.max_model_len", "256",
        "--generator.max_new_tokens", "16", "--services.host", bind,
    ]  # fmt: skip


def _member(resilient, keys, member_id):
    found = [m for m in list_members(resilient, keys, "generator") if m["id"] == member_id]
    return found[0] if found else None


def _pending(client, keys, consumer):
    try:
        rows = client.xpending_range(keys.stream("prompts"), "generators", "-", "+", 1000, consumer)
    except redis.ResponseError:
        return 0
    return len(rows)


def test_generators_on_other_hosts_train_drop_out_and_rejoin(
    hosts, server_redis, tmp_path, tiny_model_dir, faults
):
    url, run = f"redis://{hosts.server}:{server_redis}/0", "across-hosts"
    keys, data = Keys(run), write_task(tmp_path / "train.jsonl")
    cfg = RedisConfig(url=url, password=PASSWORD)
    resilient, client = Resilient.from_config(cfg), redis.Redis.from_url(url, password=PASSWORD)
    board = SyncBoard(resilient, keys)
    args = learner_args(url, run, tmp_path, tiny_model_dir, data)
    # stopped by the test once host 1 is back (SIGTERM: a checkpoint, then exit 0)
    args += ["--learner.max_steps", "100000", "--sync.host", "0.0.0.0", "--sync.timeout_s", "10"]
    args += ["--redis.heartbeat_interval_s", "1", "--redis.heartbeat_ttl_s", "4"]
    gen_args = (url, run, tmp_path, tiny_model_dir)
    procs = [
        remote(hosts, 1, "generator", *gen_args, *generator_args("gen-h1", hosts.address(1))),
        remote(hosts, 2, "generator", *gen_args, *generator_args("gen-h2", "0.0.0.0")),
        remote(hosts, 3, "verifier", *gen_args, "--verifier.workers", "1"),
    ]
    learner = spawn("-m", "services.learner", *args, env={"LUFFY_REDIS__PASSWORD": PASSWORD})
    procs.append(learner)
    try:
        # both remote generators take part in the weight sync and follow the learner
        for name in ("gen-h1", "gen-h2"):
            wait_for(lambda n=name: _version(resilient, keys, n) >= 2, 240, f"{name} at v2")
        for i, name in ((1, "gen-h1"), (2, "gen-h2")):
            member = _member(resilient, keys, name)
            assert member["host"] == hosts.address(i), member  # reachable, not loopback
            status = httpx.get(f"http://{member['host']}:{member['port']}/status", timeout=5)
            assert status.status_code == 200
        wait_for(lambda: _pending(client, keys, "gen-h1") > 0, 120, "gen-h1 holding tasks")
        hosts.cut(1)
        cut, cut_at = time.monotonic(), board.policy_version()
        # the next sync leaves it out; training goes on; host 2 takes over its tasks
        wait_for(lambda: _epoch_without(board, "gen-h1"), 60, "an epoch without gen-h1")
        dropped_s = time.monotonic() - cut
        wait_for(lambda: board.policy_version() >= cut_at + 3, 120, "training to go on")
        wait_for(lambda: _pending(client, keys, "gen-h1") == 0, 60, "its tasks reclaimed")
        reclaimed_s = time.monotonic() - cut
        hosts.restore(1)
        restored, back_at = time.monotonic(), board.policy_version()
        wait_for(lambda: "gen-h1" in _epoch_members(board), 90, "gen-h1 back in the sync")
        wait_for(lambda: _version(resilient, keys, "gen-h1") > back_at, 90, "gen-h1 caught up")
        rejoined_s = time.monotonic() - restored
        learner.send_signal(signal.SIGTERM)
        out = learner.output(timeout=300)
        assert learner.returncode == 0, out[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None and proc is not learner:
                proc.send_signal(signal.SIGTERM)
        stop_services(*procs, timeout=60)
        for proc in procs:  # shown by pytest when the test failed
            print(f"==== {proc.args[-12:]}\n" + "".join(proc.lines[-40:]))
    run_dir = tmp_path / run
    newest = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    meta = json.loads((newest / "meta.json").read_text())
    books = account(run_dir, meta, 60)
    assert books.duplicates == 0 and books.fed == books.accounted, books
    faults.add(
        "a generator host's link cut mid-batch, then restored",
        injected=1,
        survived=1,
        lost=len(books.fed - books.accounted),
        duplicated=books.duplicates,
        dropped_from_sync_s=round(dropped_s, 1),
        tasks_reclaimed_s=round(reclaimed_s, 1),
        rejoined_s=round(rejoined_s, 1),
        steps=meta["step"],
    )


def _epoch_members(board):
    epoch = board.read().epoch
    return set(epoch.ranks) if epoch else set()


def _epoch_without(board, member):
    members = _epoch_members(board)
    return bool(members) and member not in members


def _version(resilient, keys, member_id):
    return int((_member(resilient, keys, member_id) or {}).get("policy_version") or 0)
