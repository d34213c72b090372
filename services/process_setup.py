"""Process-wide settings a role applies before its engine or trainer exists: torch/OpenMP
thread caps and glibc's malloc behaviour."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("luffy")


def limit_threads(threads: int) -> None:
    """Cap torch/OpenMP threads before the engine or trainer exists (vLLM's CPU worker blocks
    ``torch.set_num_threads`` once it has bound its threads)."""
    if threads <= 0:
        return
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)


def keep_freed_memory(enabled: bool) -> None:
    """Have glibc keep freed heap memory for reuse (mmap only above 32 MB, trim above 1 GB,
    grow the heap 64 MB at a time). By default a training step's large activations and
    gradients are mmapped, unmapped and faulted back in every step: the tiny learner spent 13%
    of its CPU in the kernel and its step ran 1.25x slower. Not glibc (musl, macOS): no-op."""
    if not enabled:
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # glibc's malloc.h
    for option, value in ((m_mmap_threshold, 32 << 20), (m_trim_threshold, 1 << 30)):
        if not libc.mallopt(option, value):
            log.warning(
                "mallopt(%d, %d) refused; freed memory goes back to the kernel", option, value
            )
    libc.mallopt(m_top_pad, 64 << 20)
