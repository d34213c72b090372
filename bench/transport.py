"""Transport throughput: publish -> consume -> ack of Rollouts through luffy's StreamPublisher /
StreamConsumer (msgpack, validated decode, dedupe, atomic commit) vs raw redis-py XADD /
XREADGROUP / XACK, against the same Redis, interleaved in one run. Prints JSON.

    .venv/bin/python bench/transport.py [--url redis://127.0.0.1:6379/0] [--messages 4000]

Two raw baselines, both pipelined XADD, XREADGROUP and XACK in batches of 64:
- ``raw_msgpack``: a redis-py user shipping the same rollouts: encode each with the same
  msgpack encoder before XADD, decode each with plain (unvalidated) msgpack + numpy views after
  XREADGROUP. Target (issue #2): luffy / raw_msgpack >= 0.8 for 1 KB and 32 KB rollouts.
- ``raw_bytes``: pre-encoded bytes in, bytes out, no codec at all (reported), and
  ``luffy_bytes`` the same through our publisher / consumer (transport only, reported).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid

import msgspec
import numpy as np
import redis

from common.config import RedisConfig
from common.machine import describe
from common.schemas import Rollout, decode_rollout, encode_rollout
from common.transport import (
    Keys,
    Resilient,
    StreamConsumer,
    StreamPublisher,
    delete_run_keys,
)

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


def plain_decode(payload: bytes) -> dict:
    """What a raw user does to get arrays back: msgpack to a dict, numpy views, no checks."""
    fields = msgspec.msgpack.decode(payload)
    fields["completion_ids"] = np.frombuffer(fields["completion_ids"], dtype="<i4")
    fields["prompt_ids"] = np.frombuffer(fields["prompt_ids"], dtype="<i4")
    fields["logprobs"] = np.frombuffer(fields["logprobs"], dtype="<f4")
    return fields


def run_raw(client: redis.Redis, items: list, codec: bool) -> float:
    """``items``: Rollouts (codec: encode before XADD, decode after read) or encoded bytes."""
    stream, group = f"bench:{{{uuid.uuid4().hex}}}:raw", "g"
    client.xgroup_create(stream, group, id="0", mkstream=True)
    start = time.perf_counter()
    for i in range(0, len(items), BATCH):
        pipe = client.pipeline(transaction=False)
        for j, item in enumerate(items[i : i + BATCH]):
            pipe.xadd(stream, {"k": str(i + j), "d": encode_rollout(item) if codec else item})
        pipe.execute()
    received = 0
    while received < len(items):
        reply = client.xreadgroup(group, "c", {stream: ">"}, count=BATCH)
        entries = reply[0][1]
        if codec:
            [plain_decode(fields[b"d"]) for _, fields in entries]
        client.xack(stream, group, *[eid for eid, _ in entries])
        received += len(entries)
    elapsed = time.perf_counter() - start
    client.delete(stream)
    return len(items) / elapsed


def run_luffy(
    resilient: Resilient,
    cfg: RedisConfig,
    rollouts: list[Rollout],
    payloads: list[bytes] | None = None,
) -> float:
    """With ``payloads`` (the rollouts already encoded): bytes in, undecoded bytes out, i.e.
    the transport alone; without: encode before publishing, validated decode on fetch."""
    keys = Keys(f"bench-{uuid.uuid4().hex[:8]}")
    publisher = StreamPublisher(resilient, keys, "rollouts")
    decode = decode_rollout if payloads is None else None
    consumer = StreamConsumer(resilient, keys, "rollouts", "c", cfg, decode=decode)
    start = time.perf_counter()
    for i in range(0, len(rollouts), BATCH):
        chunk = rollouts[i : i + BATCH]
        if payloads is None:
            publisher.publish([(r.rollout_id, encode_rollout(r)) for r in chunk])
        else:
            ready = payloads[i : i + BATCH]
            publisher.publish([(r.rollout_id, p) for r, p in zip(chunk, ready, strict=True)])
    received = 0
    while received < len(rollouts):
        batch = consumer.fetch(BATCH)
        consumer.commit([(d, []) for d in batch])
        received += len(batch)
    elapsed = time.perf_counter() - start
    delete_run_keys(resilient.client, keys)
    return len(rollouts) / elapsed


def measure(url: str, messages: int, completion_tokens: int, rounds: int) -> dict:
    rollouts = make_rollouts(messages, completion_tokens)
    payloads = [encode_rollout(r) for r in rollouts]
    client = redis.Redis.from_url(url)
    cfg = RedisConfig(url=url, read_count=BATCH, block_ms=100)
    resilient = Resilient.from_config(cfg)
    run_raw(client, payloads[:BATCH], codec=False)  # warm-up: connections, Lua scripts
    run_luffy(resilient, cfg, rollouts[:BATCH])
    runs = {
        "raw_bytes": lambda: run_raw(client, payloads, codec=False),
        "raw_msgpack": lambda: run_raw(client, rollouts, codec=True),
        "luffy": lambda: run_luffy(resilient, cfg, rollouts),
        "luffy_bytes": lambda: run_luffy(resilient, cfg, rollouts, payloads),
    }
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):  # interleaved so drift on the machine hits all alike
        for name, run in runs.items():
            rates[name].append(run())
    med = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "payload_bytes": int(statistics.mean(len(p) for p in payloads)),
        "messages": messages,
        **{f"{name}_msgs_per_s": round(value, 1) for name, value in med.items()},
        "ratio": round(med["luffy"] / med["raw_msgpack"], 3),
        "ratio_to_raw_bytes": round(med["luffy"] / med["raw_bytes"], 3),
        "transport_only_ratio": round(med["luffy_bytes"] / med["raw_bytes"], 3),
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
                "machine": describe(),
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
