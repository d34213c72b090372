"""Child processes for integration tests (real processes, killed for real).

python -m tests.integration.procs hold URL RUN STREAM CONSUMER COUNT
    fetch COUNT entries without acking, print "HOLDING <n>", then wait to be killed.
python -m tests.integration.procs relay [luffy config overrides...]
    run the real ServiceRuntime with RelayWorker (prompts -> rollouts, payload unchanged);
    its control ``stall`` makes the next step block until the process stops (a wedged loop).
python -m tests.integration.procs heartbeat URL RUN ID TTL
    keep a membership key alive, print "BEATING", wait to be killed.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from common.config import RedisConfig, load_config
from common.logs import setup_logging
from common.membership import Heartbeat
from common.shell import ServiceContext, ServiceRuntime
from common.transport import Keys, Output, Resilient, StreamConsumer


class RelayWorker:
    """Smallest real worker: moves entries from ``prompts`` to ``rollouts``."""

    def setup(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.stalled = False
        self.consumer = StreamConsumer(
            ctx.redis, ctx.keys, "prompts", ctx.member_id, ctx.config.redis
        )
        self.relayed = ctx.metrics.counter("relayed_total", "Entries relayed")

    def step(self) -> bool:
        if self.stalled:
            self.ctx.stop.wait()  # wedged until the process is told to stop
        batch = self.consumer.fetch(block_ms=50)
        written = self.consumer.commit([(d, [Output("rollouts", d.key, d.payload)]) for d in batch])
        self.relayed.inc(sum(written))
        return bool(batch)

    def status(self) -> dict[str, Any]:
        return {"counters": vars(self.consumer.stats)}

    def not_ready(self) -> list[str]:
        return []

    def controls(self) -> dict:
        def stall() -> dict:
            self.stalled = True
            return {"stalled": True}

        return {"stall": stall}

    def member_info(self) -> dict:
        return {}

    def routes(self, app, ctx) -> None:
        pass

    def close(self) -> None:
        pass


def hold(url: str, run: str, stream: str, consumer: str, count: str) -> None:
    cfg = RedisConfig(url=url, block_ms=100)
    c = StreamConsumer(Resilient.from_config(cfg), Keys(run), stream, consumer, cfg)
    held: list = []
    while len(held) < int(count):
        held += c.fetch(count=int(count) - len(held))
    print(f"HOLDING {len(held)}", flush=True)
    signal.pause()


def heartbeat(url: str, run: str, member_id: str, ttl: str) -> None:
    cfg = RedisConfig(url=url)
    Heartbeat(
        Resilient.from_config(cfg),
        Keys(run),
        "generator",
        member_id,
        lambda: {"port": 1},
        interval_s=float(ttl) / 5,
        ttl_s=float(ttl),
    ).start()
    print("BEATING", flush=True)
    signal.pause()


def relay(overrides: list[str]) -> int:
    cfg = load_config(overrides=overrides, environ={})
    setup_logging("INFO", "relay")
    return ServiceRuntime("relay", cfg, RelayWorker()).run()


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "hold":
        hold(*args)
    elif cmd == "heartbeat":
        heartbeat(*args)
    elif cmd == "relay":
        sys.exit(relay(args))
    else:
        sys.exit(f"unknown command {cmd!r}")
