"""What machine a measurement ran on: CPU model, cores, the vector ISA vLLM's CPU kernels pick
from (AVX-512 or AVX2 only: they differ), for every benchmark's JSON."""

from __future__ import annotations

import os
import platform
from pathlib import Path

_ISA = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor says it for all
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def describe(path: Path = Path("/proc/cpuinfo")) -> dict:
    """{"host", "arch", "cpus", "cpu", "isa": [flags of _ISA present], "avx512": bool}."""
    info = _cpuinfo(path)
    flags = set(info.get("flags", "").split())
    return {
        "host": platform.node(),
        "arch": platform.machine(),
        "cpus": os.cpu_count(),
        "cpu": info.get("model name") or platform.processor() or "unknown",
        "isa": [f for f in _ISA if f in flags],
        "avx512": "avx512f" in flags,
    }


__all__ = ["describe"]
