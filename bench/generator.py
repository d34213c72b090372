"""Generator benchmark, all measured in one run. Prints JSON.

1. Throughput: completion tokens/s of the vllm engine vs the hf engine, same tiny model, same
   prompts and sampling (16 prompts x 8 samples x up to 64 tokens), interleaved rounds.
2. Weight sync: a `luffy generator` process (vllm, then hf engine) on a ~190 MB model
   (3 buckets of <= 64 MB) receives pushes from ``WeightBroadcaster``; compared with a raw
   torch.distributed gloo broadcast of the same bytes between two processes, timed between
   our pushes (interleaved). Reported separately: the transfer (the receiver's time inside
   the bucket broadcasts), the load into the live engine, and the learner's end-to-end push
   (announce, transfer, load, ack).

3. Scheduling: a continuous and a batch `luffy generator` process (vllm, the tiny model, at
   most 64 sequences in flight either way) on the same workloads, interleaved: ``long_tail``
   (9 in 10 tasks stop at a tenth of the 240-token cap, one in 10 runs to it) and ``uniform``
   (every task to a quarter of the cap); completion tokens/s from publishing the tasks to
   their last rollout, and the engine's occupancy (sequences running per decode step over the
   capacity) over the same span.

    .venv/bin/python bench/generator.py [--rounds 3] [--pushes 9] [--tasks 64] [--only scheduling]

Targets: weight-sync transfer <= 1.2 x the raw broadcast (issue #4); continuous >= 1.5 x
batch tokens/s on ``long_tail`` and no loss on ``uniform`` (issue #19).
"""

from __future__ import annotations

import argparse
import json
import os
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
from common.machine import describe  # noqa: E402

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


def _generator_proc(model_dir: Path, run: str, out_dir: str, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable, "-m", "services.generator",
            "--run.name", run, "--run.output_dir", out_dir, "--model.path", str(model_dir),
            "--generator.id", "bench",
            "--run.log_level", "WARNING", *flags,
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def _workload(kind: str, count: int, cap: int, round_: int, n: int = 4) -> list:
    """``count`` tasks of ``n`` samples. long_tail: 9 in 10 tasks may run to a tenth of the
    cap, one in 10 to the cap (a random tiny model rarely samples EOS: lengths follow the
    limits); uniform: every task to a quarter of the cap."""
    import random

    from common.schemas import Sampling, Task

    rng = random.Random(round_)
    tasks = []
    for i in range(count):
        limit = (cap if rng.random() < 0.1 else cap // 10) if kind == "long_tail" else cap // 4
        prompt = [5 + rng.randrange(400) for _ in range(8)]
        sampling = Sampling(1.0, 1.0, limit, 1000 * round_ + i)
        tasks.append(Task(f"{kind}-{round_}-{i}", f"p{i}", prompt, n, sampling, "0"))
    return tasks


def _run_workload(resilient, keys, port: int, tasks: list) -> dict:
    import httpx

    from common.schemas import decode_rollout, encode_task
    from common.transport import StreamPublisher

    def load() -> dict:
        return httpx.get(f"http://127.0.0.1:{port}/status").json()["engine_load"]

    before, seen = load(), resilient.client.xlen(keys.stream("rollouts"))
    want = seen + sum(t.n for t in tasks)
    start = time.perf_counter()
    StreamPublisher(resilient, keys, "prompts").publish(
        [(t.task_id, encode_task(t)) for t in tasks]
    )
    while resilient.client.xlen(keys.stream("rollouts")) < want:
        time.sleep(0.01)
    wall = time.perf_counter() - start
    after = load()
    entries = resilient.client.xrange(keys.stream("rollouts"))[seen:]
    tokens = sum(len(decode_rollout(f[b"d"]).completion_ids) for _, f in entries)
    running = after["running_steps"] - before["running_steps"]
    capacity = after["capacity_steps"] - before["capacity_steps"]
    return {
        "tokens_per_s": tokens / wall,
        "occupancy": running / max(1, capacity),
        "tokens": tokens,
    }


def scheduling(
    model_dir: Path, rounds: int, count: int, cap: int = 240, inflight: int = 64, *flags: str
) -> dict:
    """Continuous vs batch scheduling: one generator process each (same engine, ``inflight``
    sequences at most in flight: inflight / 4 tasks x 4 samples per batch), the same
    workloads, interleaved. ``flags`` go to both generators (e.g. a GPU's engine settings)."""
    from common.config import RedisConfig
    from common.membership import list_members
    from common.transport import Keys, Resilient, delete_run_keys

    resilient = Resilient.from_config(RedisConfig())
    out_dir, procs, keys = tempfile.mkdtemp(), {}, {}
    for mode in ("batch", "continuous"):
        keys[mode] = Keys(f"bench-sched-{mode}-{uuid.uuid4().hex[:8]}")
        mode_flags = ["--generator.scheduling", mode,
                      "--generator.max_batch_tasks", str(inflight // 4),
                      "--generator.max_inflight_sequences", str(inflight),
                      "--generator.max_model_len", str(max(512, cap + 64))]  # fmt: skip
        procs[mode] = _generator_proc(model_dir, keys[mode].run, out_dir, *mode_flags, *flags)
    runs: dict = {w: {m: [] for m in procs} for w in ("long_tail", "uniform")}
    try:
        ports = {}
        for mode, proc in procs.items():
            while not (members := list_members(resilient, keys[mode], "generator")):
                if proc.poll() is not None:
                    raise RuntimeError(f"the {mode} generator died while starting")
                time.sleep(0.2)
            ports[mode] = members[0]["port"]
            _run_workload(resilient, keys[mode], ports[mode], _workload("uniform", 8, 32, 99))
        for r in range(rounds):  # interleaved: the machine's drift hits both modes alike
            for workload in runs:
                for mode in procs:
                    tasks = _workload(workload, count, cap, r)
                    runs[workload][mode].append(
                        _run_workload(resilient, keys[mode], ports[mode], tasks)
                    )
    finally:
        for mode, proc in procs.items():
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            delete_run_keys(resilient.client, keys[mode])
    return {w: _scheduling_summary(by_mode) for w, by_mode in runs.items()}


def _scheduling_summary(by_mode: dict) -> dict:
    med = {
        m: {k: statistics.median(r[k] for r in rs) for k in ("tokens_per_s", "occupancy")}
        for m, rs in by_mode.items()
    }
    return {
        **{f"{m}_{k}": round(v, 3) for m, d in med.items() for k, v in d.items()},
        "continuous_vs_batch": round(
            med["continuous"]["tokens_per_s"] / med["batch"]["tokens_per_s"], 2
        ),
        "runs": {
            m: [{k: round(v, 3) for k, v in r.items()} for r in rs] for m, rs in by_mode.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pushes", type=int, default=9)
    parser.add_argument("--tasks", type=int, default=64, help="tasks per scheduling workload")
    parser.add_argument("--only", choices=["scheduling"], help="run one part (default: every part)")
    parser.add_argument(
        "--model-path", type=Path, help="scheduling on this HF folder instead of the tiny model"
    )
    parser.add_argument("--cap", type=int, default=240, help="scheduling's response-length cap")
    parser.add_argument("--inflight", type=int, default=64, help="sequences in flight at most")
    parser.add_argument(
        "--generator-flag", action="append", default=[], help="extra generator CLI flag (repeat)"
    )
    args = parser.parse_args()
    from common.config import TinyModelConfig
    from services.demo.tiny_model import build_tiny_model

    big_shape = TinyModelConfig(
        hidden_size=1024, num_layers=4, num_heads=16, num_kv_heads=8, intermediate_size=2816
    )
    with tempfile.TemporaryDirectory() as tmp:
        small = build_tiny_model(Path(tmp) / "small", TinyModelConfig(), seed=0)
        model = args.model_path or small
        parts = {
            "scheduling": scheduling(
                model, args.rounds, args.tasks, args.cap, args.inflight, *args.generator_flag
            )
        }
        if not args.only:
            big = build_tiny_model(Path(tmp) / "big", big_shape, seed=0)
            parts["weight_sync"] = {e: weight_sync(big, args.pushes, e) for e in ("vllm", "hf")}
            parts["throughput"] = throughput(small, args.rounds)
    result = {
        "bench": "generator",
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d"),
        **parts,
        "targets": {
            "weight_sync": "transfer <= 1.2 x raw broadcast",
            "scheduling": "continuous >= 1.5 x batch tokens/s on long_tail, >= 1.0 on uniform",
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
