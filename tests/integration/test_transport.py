import signal
import threading

import pytest

from common.config import RedisConfig
from common.embedded_redis import EmbeddedRedis
from common.schemas import decode_rollout
from common.transport import (
    Keys,
    Output,
    Resilient,
    StreamConsumer,
    StreamPublisher,
    delete_run_keys,
    stream_depths,
    trim_acked,
)
from tests.integration.helpers import spawn, wait_for, wait_line


def publish_n(resilient, run_name, n, stream="rollouts"):
    pub = StreamPublisher(resilient, Keys(run_name), stream)
    return pub.publish([(f"id-{i}", f"payload-{i}".encode()) for i in range(n)])


def drain(consumer, want: int, timeout_s=20, outputs=True):
    """Fetch and commit until ``want`` distinct keys were committed."""
    got: dict[str, bytes] = {}

    def step():
        batch = consumer.fetch()
        consumer.commit(
            [(d, [Output("scored", d.key, d.payload)] if outputs else []) for d in batch]
        )
        got.update({d.key: d.payload for d in batch})
        return len(got) >= want

    wait_for(step, timeout_s, f"{want} entries")
    return got


def test_sigkilled_consumer_loses_nothing(redis_url, run_name, redis_cfg, resilient, rclient):
    publish_n(resilient, run_name, 20)
    child = spawn(
        "-m", "tests.integration.procs", "hold", redis_url, run_name, "rollouts", "doomed", "10"
    )
    try:
        assert wait_line(child, "HOLDING") == "HOLDING 10"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    keys = Keys(run_name)
    assert rclient.xpending(keys.stream("rollouts"), "verifiers")["pending"] == 10
    survivor = StreamConsumer(resilient, keys, "rollouts", "survivor", redis_cfg)
    got = drain(survivor, 20)
    assert sorted(got) == sorted(f"id-{i}" for i in range(20))
    assert survivor.stats.reclaimed == 10
    assert rclient.xpending(keys.stream("rollouts"), "verifiers")["pending"] == 0
    assert rclient.xlen(keys.stream("scored")) == 20


def test_malformed_entries_go_to_deadletter_and_the_loop_goes_on(
    run_name, redis_cfg, resilient, rclient
):
    keys = Keys(run_name)
    consumer = StreamConsumer(resilient, keys, "rollouts", "c1", redis_cfg, decode=decode_rollout)
    stream = keys.stream("rollouts")
    rclient.xadd(stream, {"junk": "1"})
    rclient.xadd(stream, {"k": "bad", "d": b"\x92\x01\x02"})
    big = RedisConfig(url=redis_cfg.url, max_entry_bytes=1024)
    from common.schemas import Rollout, encode_rollout

    good = Rollout("r1", "t1", 0, [1, 2], [3, 4], [-0.1, -0.2], "txt", "1", 0)
    rclient.xadd(stream, {"k": "r1", "d": encode_rollout(good)})
    batch = consumer.fetch()
    assert [d.key for d in batch] == ["r1"]
    assert batch[0].value.completion_ids.tolist() == [3, 4]
    dead = rclient.xrange(keys.deadletter)
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert reasons[0] == "malformed entry: fields 'k' and 'd' are required"
    assert reasons[1] == "rollout: Expected `object`, got `array`"
    assert dead[1][1][b"orig_k"] == b"bad"
    assert consumer.stats.deadlettered == 2
    assert rclient.xpending(stream, "verifiers")["pending"] == 1  # only the good one, unacked

    small = StreamConsumer(resilient, keys, "rollouts", "c2", big, group="other")
    rclient.xadd(stream, {"k": "huge", "d": b"x" * 5000})
    # group "other" reads from the start and decodes nothing: only the oversized entry is poison
    assert [d.key for d in small.fetch()] == ["bad", "r1"]
    assert (
        "payload of 5000 bytes exceeds 1024"
        in rclient.xrange(keys.deadletter)[-1][1][b"reason"].decode()
    )


def test_a_redelivered_or_republished_id_counts_once(run_name, redis_cfg, resilient, rclient):
    keys = Keys(run_name)
    pub = StreamPublisher(resilient, keys, "rollouts")
    pub.publish([("r1", b"a"), ("r2", b"b")])
    consumer = StreamConsumer(resilient, keys, "rollouts", "c1", redis_cfg, precheck_seen=True)
    batch = consumer.fetch()
    assert consumer.commit([(d, [Output("scored", d.key, d.payload)]) for d in batch]) == [
        True,
        True,
    ]
    # a second commit of the same deliveries (a retry after a lost reply) writes nothing
    assert consumer.commit([(d, [Output("scored", d.key, d.payload)]) for d in batch]) == [
        False,
        False,
    ]
    pub.publish([("r1", b"a-again")])  # upstream re-published r1 (it died before acking)
    assert consumer.fetch() == []  # screened out at fetch and acked
    pub.publish([("r2", b"b-again")])
    lazy = StreamConsumer(resilient, keys, "rollouts", "c2", redis_cfg)  # no pre-check:
    (again,) = lazy.fetch()  # the duplicate is handed out, but its commit writes nothing
    assert lazy.commit([(again, [Output("scored", again.key, again.payload)])]) == [False]
    assert rclient.xlen(keys.stream("scored")) == 2
    assert consumer.stats.duplicates == 3 and lazy.stats.duplicates == 1
    assert rclient.xpending(keys.stream("rollouts"), "verifiers")["pending"] == 0


def test_entry_failing_repeatedly_goes_to_deadletter_with_last_error(
    run_name, resilient, rclient, redis_url
):
    cfg = RedisConfig(url=redis_url, block_ms=20, claim_idle_ms=100, max_deliveries=2)
    keys = Keys(run_name)
    StreamPublisher(resilient, keys, "rollouts").publish([("p", b"poison")])
    consumer = StreamConsumer(resilient, keys, "rollouts", "c1", cfg)

    def fail_all():
        for d in consumer.fetch():
            consumer.fail(d, f"boom on delivery {d.deliveries}")
        return consumer.stats.deadlettered

    wait_for(fail_all, 10, "deadletter")
    ((_, fields),) = rclient.xrange(keys.deadletter)
    assert fields[b"reason"].decode() == (
        "delivered 3 times without ack (max 2); last error: boom on delivery 2"
    )
    assert consumer.stats.failed == 2
    assert rclient.xpending(keys.stream("rollouts"), "verifiers")["pending"] == 0


def test_trim_keeps_everything_some_group_still_needs(run_name, redis_cfg, resilient, rclient):
    keys = Keys(run_name)
    publish_n(resilient, run_name, 10)
    consumer = StreamConsumer(resilient, keys, "rollouts", "c1", redis_cfg)
    batch = consumer.fetch(count=10)
    consumer.commit([(d, []) for d in batch[:4]])
    assert trim_acked(resilient, keys, "rollouts") == 4  # entries 5..10 are pending
    assert rclient.xlen(keys.stream("rollouts")) == 6
    lagging = StreamConsumer(resilient, keys, "rollouts", "c2", redis_cfg, group="audit")
    consumer.commit([(d, []) for d in batch[4:]])
    assert trim_acked(resilient, keys, "rollouts") == 0  # group "audit" has read nothing yet
    drain(lagging, 6, outputs=False)
    assert trim_acked(resilient, keys, "rollouts") == 6
    depths = stream_depths(resilient, keys)
    assert depths["rollouts"] == {"length": 0, "lag": 0, "pending": 0}


def test_delete_run_keys_removes_that_run_only(run_name, resilient, rclient):
    keys, longer = Keys(run_name), Keys(run_name + "x")  # a name the first one prefixes
    publish_n(resilient, run_name, 3)
    rclient.set(keys.policy_version, 3)
    rclient.set(longer.policy_version, 1)
    try:
        assert delete_run_keys(rclient, keys) == 2  # the rollouts stream and policy_version
        assert rclient.exists(keys.stream("rollouts"), keys.policy_version) == 0
        assert rclient.get(longer.policy_version) == b"1"
    finally:
        rclient.delete(longer.policy_version)


def test_reconnects_with_backoff_when_redis_goes_away(tmp_path):
    server = EmbeddedRedis(tmp_path / "r").start()
    cfg = RedisConfig(url=server.url, reconnect_initial_s=0.05, reconnect_max_s=0.2, block_ms=50)
    try:
        resilient = Resilient.from_config(cfg)
        keys = Keys("reconnect")
        pub = StreamPublisher(resilient, keys, "prompts")
        pub.publish([("a", b"1")])
        server.stop()
        done = threading.Event()
        result: list = []
        thread = threading.Thread(
            target=lambda: (result.append(pub.publish([("b", b"2")])), done.set())
        )
        thread.start()
        wait_for(lambda: not resilient.connected, 10, "the outage to be noticed")
        assert not done.is_set()
        server.start()  # same port, same data dir: the AOF brings entry "a" back
        assert done.wait(15), "publish did not complete after Redis came back"
        assert resilient.connected and resilient.outages == 1
        consumer = StreamConsumer(resilient, keys, "prompts", "c", cfg)
        assert [d.key for d in consumer.fetch()] == ["a", "b"]
    finally:
        server.stop()


def test_consumer_recreates_its_group_after_redis_lost_its_data(
    run_name, redis_cfg, resilient, rclient
):
    keys = Keys(run_name)
    consumer = StreamConsumer(resilient, keys, "prompts", "c", redis_cfg)
    rclient.delete(keys.stream("prompts"))  # as after a restart without persistence
    assert consumer.fetch() == []
    StreamPublisher(resilient, keys, "prompts").publish([("x", b"1")])
    assert [d.key for d in consumer.fetch()] == ["x"]


@pytest.mark.parametrize("ttl", [0.5])
def test_membership_key_expires_when_the_process_dies(redis_url, run_name, resilient, rclient, ttl):
    from common.membership import list_members

    keys = Keys(run_name)
    child = spawn(
        "-m", "tests.integration.procs", "heartbeat", redis_url, run_name, "g-1", str(ttl)
    )
    try:
        wait_line(child, "BEATING")
        members = list_members(resilient, keys, "generator")
        assert [(m["id"], m["port"]) for m in members] == [("g-1", 1)]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    wait_for(lambda: not list_members(resilient, keys, "generator"), 5, "the key to expire")
