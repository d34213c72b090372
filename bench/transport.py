"""Transport throughput: publish -> consume -> ack through luffy's StreamPublisher /
StreamConsumer (msgpack Rollouts, dedupe, atomic commit) vs raw redis-py XADD / XREADGROUP /
XACK of the same bytes, against the same Redis, interleaved in one run. Prints JSON.

    .venv/bin/python bench/transport.py [--url redis://127.0.0.1:6379/0] [--messages 4000]

Target (issue #2): luffy / raw >= 0.8 for 1 KB and 32 KB rollouts.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import uuid

import numpy as np
import redis

from common.config import RedisConfig
from common.schemas import Rollout, decode_rollout, encode_rollout
from common.transport import Keys, Resilient, StreamConsumer, StreamPublisher

BATCH = 64


def make_rollouts(n: int, completion_tokens: int) -> list[Rollout]:
    rng = np.random.default_rng(0)
    return [
        Rollout(
            rollout_id=f"task-{i}/0",
            task_id=f"task-{i}",
            sample=0,
            prompt_ids=rng.integers(0, 50_000, 48),
            completion_ids=rng.integers(0, 50_000, completion_tokens),
            logprobs=-rng.random(completion_tokens),
            text="x" * (completion_tokens // 2),
            gold="42",
            policy_version=1,
            generator_id="bench",
        )
        for i in range(n)
    ]


def run_raw(client: redis.Redis, payloads: list[bytes]) -> float:
    stream, group = f"bench:{{{uuid.uuid4().hex}}}:raw", "g"
    client.xgroup_create(stream, group, id="0", mkstream=True)
    start = time.perf_counter()
    for i in range(0, len(payloads), BATCH):
        pipe = client.pipeline(transaction=False)
        for j, payload in enumerate(payloads[i : i + BATCH]):
            pipe.xadd(stream, {"k": str(i + j), "d": payload})
        pipe.execute()
    received = 0
    while received < len(payloads):
        reply = client.xreadgroup(group, "c", {stream: ">"}, count=BATCH)
        entries = reply[0][1]
        client.xack(stream, group, *[eid for eid, _ in entries])
        received += len(entries)
    elapsed = time.perf_counter() - start
    client.delete(stream)
    return len(payloads) / elapsed


def run_luffy(resilient: Resilient, cfg: RedisConfig, rollouts: list[Rollout]) -> float:
    keys = Keys(f"bench-{uuid.uuid4().hex[:8]}")
    publisher = StreamPublisher(resilient, keys, "rollouts")
    consumer = StreamConsumer(resilient, keys, "rollouts", "c", cfg, decode=decode_rollout)
    start = time.perf_counter()
    for i in range(0, len(rollouts), BATCH):
        publisher.publish([(r.rollout_id, encode_rollout(r)) for r in rollouts[i : i + BATCH]])
    received = 0
    while received < len(rollouts):
        batch = consumer.fetch(BATCH)
        consumer.commit([(d, []) for d in batch])
        received += len(batch)
    elapsed = time.perf_counter() - start
    for key in resilient.client.scan_iter(match=keys.prefix + "*"):
        resilient.client.delete(key)
    return len(rollouts) / elapsed


def measure(url: str, messages: int, completion_tokens: int, rounds: int) -> dict:
    rollouts = make_rollouts(messages, completion_tokens)
    payloads = [encode_rollout(r) for r in rollouts]
    client = redis.Redis.from_url(url)
    cfg = RedisConfig(url=url, read_count=BATCH, block_ms=100)
    resilient = Resilient.from_config(cfg)
    run_raw(client, payloads[:BATCH])  # warm-up: connections open, Lua script loaded
    run_luffy(resilient, cfg, rollouts[:BATCH])
    raw, ours = [], []
    for _ in range(rounds):  # interleaved so drift on the machine hits both alike
        raw.append(run_raw(client, payloads))
        ours.append(run_luffy(resilient, cfg, rollouts))
    raw_med, ours_med = statistics.median(raw), statistics.median(ours)
    return {
        "payload_bytes": int(statistics.mean(len(p) for p in payloads)),
        "messages": messages,
        "raw_msgs_per_s": round(raw_med, 1),
        "luffy_msgs_per_s": round(ours_med, 1),
        "ratio": round(ours_med / raw_med, 3),
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    # completion tokens giving ~1 KB and ~32 KB encoded rollouts (ids + logprobs + text)
    sizes = {"1KB": (80, args.messages), "32KB": (3700, max(500, args.messages // 4))}
    results = {
        name: measure(args.url, n, tokens, args.rounds) for name, (tokens, n) in sizes.items()
    }
    target = 0.8
    print(
        json.dumps(
            {
                "bench": "transport",
                "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
                "date": time.strftime("%Y-%m-%d"),
                "batch": BATCH,
                "results": results,
                "target_ratio": target,
                "meets_target": all(r["ratio"] >= target for r in results.values()),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
