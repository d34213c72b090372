"""Generator benchmark, all measured in one run. Prints JSON.

1. Throughput: completion tokens/s of the vllm engine vs the hf engine, same tiny model, same
   prompts and sampling (16 prompts x 8 samples x up to 64 tokens), interleaved rounds.
2. Weight sync: a `luffy generator` process (vllm, then hf engine) on a ~190 MB model
   (3 buckets of <= 64 MB) receives pushes from ``WeightBroadcaster``; compared with a raw
   torch.distributed gloo broadcast of the same bytes between two processes, timed between
   our pushes (interleaved). Reported separately: the transfer (the receiver's time inside
   the bucket broadcasts), the load into the live engine, and the learner's end-to-end push
   (announce, transfer, load, ack).

    .venv/bin/python bench/generator.py [--rounds 3] [--pushes 9]

Target (issue #4): weight-sync transfer <= 1.2 x the raw broadcast.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# this file shares its name with a package: import the package, not the script
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def throughput(model_dir: Path, rounds: int) -> dict:
    from common.config import load_config
    from common.schemas import Sampling
    from generator.engines import GenRequest, make_engine

    requests = [
        GenRequest([5, 6, 7, 8, 9 + i], 8, Sampling(max_new_tokens=64, seed=i)) for i in range(16)
    ]
    engines = {}
    for name in ("vllm", "hf"):
        cfg = load_config(
            overrides=[
                "--model.path",
                str(model_dir),
                "--generator.engine",
                name,
                "--generator.max_model_len",
                "512",
            ],
            environ={},
        )
        engines[name] = make_engine(cfg)
        engines[name].generate(requests[:2])  # warm-up
    rates: dict[str, list[float]] = {"vllm": [], "hf": []}
    for _ in range(rounds):
        for name, engine in engines.items():
            start = time.perf_counter()
            out = engine.generate(requests)
            tokens = sum(len(s.completion_ids) for samples in out for s in samples)
            rates[name].append(tokens / (time.perf_counter() - start))
    vllm, hf = statistics.median(rates["vllm"]), statistics.median(rates["hf"])
    return {
        "vllm_tokens_per_s": round(vllm, 1),
        "hf_tokens_per_s": round(hf, 1),
        "vllm_vs_hf": round(vllm / hf, 2),
        "runs": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
    }


RAW_RECEIVER = """
import sys, torch, torch.distributed as dist
numel, port, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=1, world_size=2)
buf = torch.empty(numel)
for _ in range(n + 1):
    dist.broadcast(buf, 0)
"""


class RawPair:
    """A raw ``torch.distributed`` gloo broadcast of ``numel`` float32 between this process
    and a child: the baseline, timed one broadcast at a time between our pushes."""

    def __init__(self, numel: int, repeats: int):
        import torch
        import torch.distributed as dist

        from common.net import free_port

        port = free_port()
        self.child = subprocess.Popen(
            [sys.executable, "-c", RAW_RECEIVER, str(numel), str(port), str(repeats)]
        )
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=2)
        self.flat = torch.randn(numel)
        dist.broadcast(self.flat, 0)  # warm-up: connections established

    def broadcast_seconds(self) -> float:
        import torch.distributed as dist

        start = time.perf_counter()
        dist.broadcast(self.flat, 0)
        return time.perf_counter() - start

    def close(self) -> None:
        import torch.distributed as dist

        self.child.wait(60)
        dist.destroy_process_group()


def weight_sync(model_dir: Path, pushes: int, engine: str = "vllm") -> dict:
    from safetensors.torch import load_file

    from common.config import RedisConfig, SyncConfig
    from common.membership import list_members
    from common.transport import Keys, Resilient, delete_run_keys
    from common.transport.weight_sync import SyncBoard
    from learner.broadcast import WeightBroadcaster

    weights = load_file(str(model_dir / "model.safetensors"))
    total_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    resilient = Resilient.from_config(RedisConfig())
    keys = Keys(f"bench-gen-{uuid.uuid4().hex[:8]}")
    out_dir = tempfile.mkdtemp()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.generator",
            "--run.name",
            keys.run,
            "--run.output_dir",
            out_dir,
            "--model.path",
            str(model_dir),
            "--generator.id",
            "bench",
            "--generator.max_model_len",
            "512",
            "--run.log_level",
            "WARNING",
            "--generator.engine",
            engine,
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    try:
        while not any(m.get("sync_ranks") for m in list_members(resilient, keys, "generator")):
            if proc.poll() is not None:
                raise RuntimeError("generator died while starting")
            time.sleep(0.2)
        broadcaster = WeightBroadcaster(SyncBoard(resilient, keys), SyncConfig(timeout_s=120))
        first = broadcaster.push(1, weights.items())  # forms the epoch; not timed
        assert first.ok, first
        ends, transfers, loads, raw = [], [], [], []
        pair = RawPair(total_bytes // 4, pushes)
        for version in range(2, pushes + 2):
            raw.append(pair.broadcast_seconds())  # interleaved: drift hits both alike
            result = broadcaster.push(version, weights.items())
            assert result.ok, result
            ends.append(result.seconds)
            timing = json.loads(
                broadcaster.board.acks(version, broadcaster.epoch)["bench"]["detail"]
            )
            transfers.append(timing["transfer_s"])
            loads.append(timing["load_s"])
        pair.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        delete_run_keys(resilient.client, keys)
    med = {
        k: statistics.median(v)
        for k, v in {"raw": raw, "end": ends, "transfer": transfers, "load": loads}.items()
    }
    return {
        "model_bytes": total_bytes,
        "raw_broadcast_s": round(med["raw"], 4),
        "sync_transfer_s": round(med["transfer"], 4),
        "transfer_vs_raw": round(med["transfer"] / med["raw"], 2),
        "load_s": round(med["load"], 4),
        "push_end_to_end_s": round(med["end"], 4),
        "end_to_end_vs_raw": round(med["end"] / med["raw"], 2),
        "runs": {
            k: [round(x, 4) for x in v]
            for k, v in {
                "raw": raw,
                "transfer": transfers,
                "load": loads,
                "end_to_end": ends,
            }.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pushes", type=int, default=9)
    args = parser.parse_args()
    from common.config import TinyModelConfig
    from services.demo.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        small = build_tiny_model(Path(tmp) / "small", TinyModelConfig(), seed=0)
        big_shape = TinyModelConfig(
            hidden_size=1024, num_layers=4, num_heads=16, num_kv_heads=8, intermediate_size=2816
        )
        big = build_tiny_model(Path(tmp) / "big", big_shape, seed=0)
        sync = {engine: weight_sync(big, args.pushes, engine) for engine in ("vllm", "hf")}
        speed = throughput(small, args.rounds)
    result = {
        "bench": "generator",
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
        "date": time.strftime("%Y-%m-%d"),
        "throughput": speed,
        "weight_sync": sync,
        "target": "weight-sync transfer <= 1.2 x raw broadcast",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
