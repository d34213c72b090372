"""GPU check for a short lease: the learner, the HF engine and the weight-sync path on one GPU,
every figure in one JSON.

    python bench/gpu_check.py [--shape qwen2.5-1.5b] [--steps 5] [--out gpu_check.json]
    python bench/gpu_check.py --fetch-wheels .whl      # here: what the GPU machine lacks

Parts, in order (each timed on its own, nothing overlaps):
- ``build_model``: a random model of a real shape (Qwen2.5-1.5B: 28 layers, hidden 1536, 12/2
  heads, vocab 151,936, tied embeddings) saved in bf16 with the demo's small tokenizer; built on
  the fly, nothing to carry.
- ``learner_figures``: our ``Trainer`` (FSDP2, one rank, bf16 mixed precision and activation
  checkpointing on CUDA) on LUFFY-shaped batches: step time, tokens/s, MFU (6 x params x
  tokens/s over the GPU's dense bf16 peak), peak memory.
- ``push_figures``: gathering the weights for a push in the serving dtype on the device, then
  packing them into sync buckets (GB/s), and one ``SyncGroup`` (NCCL on GPU) connecting,
  broadcasting a bucket and aborting.
- ``generation_figures``: our HF engine sampling on the device (tokens/s).
It runs on CPU too (``--shape tiny``: gloo, float32), which is how the test suite checks it.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {
    "tiny": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "tie_word_embeddings": False,
    },
    "qwen2.5-1.5b": {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
}
# dense bf16 peak FLOP/s by device name (vendor figures, no sparsity)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}
# what the GPU image lacks for this script (it has torch, transformers, tokenizers, numpy)
WHEELS = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "msgspec", "redis")


def build_model(shape: str, out: Path, on_gpu: bool) -> tuple[Path, int]:
    """A random model of ``shape`` in ``out`` (bf16 on GPU); returns (folder, parameters)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from services.demo.tiny_model import synthetic_corpus, train_tokenizer

    tokenizer = train_tokenizer(synthetic_corpus(400), 512)
    eos, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    dtype = torch.bfloat16 if on_gpu else torch.float32
    config = Qwen2Config(
        **SHAPES[shape],
        max_position_embeddings=4096,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=pad,
        torch_dtype=str(dtype).removeprefix("torch."),
    )
    with torch.device("cuda" if on_gpu else "cpu"):
        model = Qwen2ForCausalLM(config).to(dtype)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


def batch(n_prompts: int, prompt_len: int, response_len: int, vocab: int, seed: int):
    """LUFFY-shaped: groups of 8 samples sharing a prompt (7 on-policy + 1 trace)."""
    from learner.batch import Sample, TrainBatch

    rng = random.Random(seed)
    samples = []
    for _ in range(n_prompts):
        prompt = [rng.randrange(5, vocab) for _ in range(prompt_len)]
        for i in range(8):
            response = [rng.randrange(5, vocab) for _ in range(response_len)]
            samples.append(
                Sample(
                    prompt + response,
                    prompt_len,
                    [-2.0] * response_len,
                    rng.uniform(-1, 1),
                    i == 7,
                    float(i % 2),
                    0,
                )
            )
    return TrainBatch(samples, n_prompts)


def config_for(model_dir: Path, on_gpu: bool, micro_batch_tokens: int):
    from common.config import load_config

    dtype = "bfloat16" if on_gpu else "float32"
    flags = {
        "model.path": str(model_dir),
        "model.dtype": dtype,
        "learner.bf16": str(on_gpu).lower(),
        "learner.activation_checkpointing": "true",
        "learner.micro_batch_tokens": str(micro_batch_tokens),
        "sync.backend": "nccl" if on_gpu else "gloo",
        "algorithm.max_response_len": "1024",
    }
    return load_config(overrides=[x for k, v in flags.items() for x in (f"--{k}", v)], environ={})


def learner_figures(cfg, params: int, steps: int, shape: dict, device_name: str, on_gpu: bool):
    import torch

    from learner.collective import Ranks
    from learner.objective import make_objective
    from learner.train import Trainer

    ranks = Ranks(Trainer(cfg, make_objective(cfg.algorithm)))
    times, tokens = [], 0
    for step in range(steps + 1):  # the first step warms up (allocator, kernels)
        b = batch(shape["prompts"], shape["prompt_len"], shape["response_len"], 500, step)
        if on_gpu:
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = ranks.train_step(b)
        if on_gpu:
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - started)
            tokens = sum(len(s.input_ids) for s in b.samples)
    step_s = sorted(times)[len(times) // 2]
    peak = next((v for k, v in PEAK_BF16.items() if k in device_name), None)
    tokens_per_s = tokens / step_s
    return ranks, {
        "parameters": params,
        "tokens_per_step": tokens,
        "step_s_median": round(step_s, 4),
        "step_s_all": [round(t, 4) for t in times],
        "tokens_per_s": round(tokens_per_s, 1),
        "mfu": round(6 * params * tokens_per_s / peak, 4) if peak and on_gpu else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None,
        "last_loss": result.loss,
        "finite": result.skipped is False,
    }


def push_figures(ranks, cfg, on_gpu: bool) -> dict:
    import torch

    from common.transport.weight_sync import (
        GroupSpec,
        create_group,
        host_store,
        pack_bucket,
        plan_buckets,
    )

    sync = lambda: torch.cuda.synchronize() if on_gpu else None  # noqa: E731
    sync()
    started = time.perf_counter()
    weights = ranks.full_state_dict(cfg.model.dtype, on_device=True)
    sync()
    gather_s = time.perf_counter() - started
    specs = [(n, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in weights.items()]
    buckets = plan_buckets(specs, cfg.sync.bucket_mb << 20)
    device = next(iter(weights.values())).device
    sync()
    started = time.perf_counter()
    flats = [pack_bucket(b, weights, device) for b in buckets]
    sync()
    pack_s = time.perf_counter() - started
    total = sum(f.numel() * f.element_size() for f in flats)
    backend = cfg.sync.backend
    store, port = host_store("127.0.0.1", 0, 1, 60.0)
    started = time.perf_counter()
    _, group = create_group(GroupSpec(1, "127.0.0.1", port, 1, backend, 60.0), 0, store)
    connect_s = time.perf_counter() - started
    group.broadcast(flats[0].to(group.device), root=0)
    group.abort()
    return {
        "push_bytes": total,
        "buckets": len(buckets),
        "dtypes": sorted({b.dtype for b in buckets}),
        "device": str(device),
        "gather_s": round(gather_s, 4),
        "pack_s": round(pack_s, 4),
        "pack_gb_per_s": round(total / pack_s / 1e9, 2),
        "sync_group": {"backend": backend, "connect_s": round(connect_s, 3), "ok": True},
    }


def generation_figures(cfg, prompts: int, samples: int, max_new: int) -> dict:
    import torch

    from common.schemas import Sampling
    from generator.engines import GenRequest, HfEngine

    engine = HfEngine(cfg, seed=0)
    rng = random.Random(0)
    requests = [
        GenRequest(
            [rng.randrange(5, 500) for _ in range(64)], samples, Sampling(1.0, 1.0, max_new, i)
        )
        for i in range(prompts)
    ]
    engine.generate(requests[:1])  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = engine.generate(requests)
    seconds = time.perf_counter() - started
    tokens = sum(len(c.completion_ids) for group in out for c in group)
    engine.close()
    return {
        "sequences": prompts * samples,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "device": str(engine.device),
    }


def fetch_wheels(folder: str) -> None:
    """Download, for the GPU image (CPython 3.12, manylinux x86_64), the wheels it lacks, at
    the versions constraints.txt pins."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.lower().replace("_", "-")] = version
    wanted = [f"{name}=={pins[name]}" for name in WHEELS]
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        "-d",
        folder,
    ]
    for platform in platforms:
        cmd += ["--platform", platform]
    subprocess.run([*cmd, *wanted], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--fetch-wheels", metavar="DIR")
    args = parser.parse_args()
    if args.fetch_wheels:
        fetch_wheels(args.fetch_wheels)
        return
    import torch

    on_gpu = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name() if on_gpu else "cpu"
    big = args.shape != "tiny"
    work = {"prompts": 8, "prompt_len": 512 if big else 16, "response_len": 1024 if big else 24}
    report: dict = {
        "bench": "gpu_check",
        "shape": args.shape,
        "device": device_name,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        model_dir, params = build_model(args.shape, Path(tmp) / "model", on_gpu)
        report["build_s"] = round(time.perf_counter() - started, 1)
        cfg = config_for(model_dir, on_gpu, 16384 if big else 512)
        ranks, report["learner"] = learner_figures(
            cfg, params, args.steps, work, device_name, on_gpu
        )
        report["push"] = push_figures(ranks, cfg, on_gpu)
        del ranks
        if on_gpu:
            torch.cuda.empty_cache()
        report["generation"] = generation_figures(cfg, 8, 8, 256 if big else 16)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
