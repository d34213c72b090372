"""Checks a service runs before it starts working, so an expected mistake (a wrong URL, a
missing model, a port in use, data that cannot train, a GPU that is not there) ends the
process within seconds with one line that names it, instead of a traceback or a silent wait.

``StartupError`` carries that line; the shell logs it without a traceback and exits with
``EXIT_BAD_SETUP`` (2, as for a config error), which ``luffy up`` takes as fatal: it stops the
stack and reports which child refused and why instead of restarting it forever.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from common.transport import Resilient

EXIT_BAD_SETUP = 2
EXIT_RESTART = 3  # stopped on purpose so that a restart (luffy up does it) rebuilds the state


class FatalError(RuntimeError):
    """The service cannot go on, for a reason its message states in one line (logged without a
    traceback; exit ``EXIT_BAD_SETUP``; ``luffy up`` stops the stack instead of restarting)."""

    exit_code = EXIT_BAD_SETUP


class MustRestart(FatalError):
    """The service stops so that its restart recovers (exit ``EXIT_RESTART``; ``luffy up``
    restarts it like any crash, the learner from its checkpoint)."""

    exit_code = EXIT_RESTART


class StartupError(FatalError):
    """An expected mistake in the setup of a run: its message is the one line users read."""


def wait_for_redis(redis_: Resilient, url: str, timeout_s: float) -> None:
    """Redis must answer within ``timeout_s`` of start (later outages are ridden out)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while not redis_.ping():
        if redis_.auth_refused:
            raise StartupError(
                f"redis at {url} refuses us ({redis_.last_error}): set redis.password "
                "(LUFFY_REDIS__PASSWORD) to its password"
            )
        if time.monotonic() + delay > deadline:
            raise StartupError(
                f"redis at {url} is not reachable after {timeout_s:g}s ({redis_.last_error}): "
                "start Redis or fix redis.url"
            )
        time.sleep(delay)  # a bounded wait at start, not a synchronisation
        delay = min(delay * 2, 2.0)


# Decoder LMs the learner (FSDP2 over ``model.layers``, ``lm_head``) and the weight sync (vLLM's
# own ``load_weights`` mapping: fused q/k/v and gate/up, tied embeddings) are tested with
# (README, "Models"); anything else is refused at start rather than failing mid-run.
SUPPORTED_ARCHITECTURES = {
    "Qwen2ForCausalLM": "Qwen2 / Qwen2.5 (the tiny test model, configs/qwen-7b-gpu.toml)",
    "LlamaForCausalLM": "Llama (SmolLM2-135M-Instruct: luffy init-real-model)",
}


def check_model_folder(path: Path) -> None:
    """``model.path`` must be an HF model folder whose config.json parses and names a tested
    architecture."""
    config = Path(path) / "config.json"
    if not Path(path).is_dir():
        raise StartupError(f"model.path {str(path)!r} is not a folder (no model there)")
    if not config.is_file():
        raise StartupError(f"model.path {str(path)!r} has no config.json (not an HF model folder)")
    try:
        parsed = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise StartupError(
            f"model.path {str(path)!r}: config.json does not parse ({exc})"
        ) from None
    if not isinstance(parsed, dict) or "model_type" not in parsed:
        raise StartupError(f"model.path {str(path)!r}: config.json has no 'model_type'")
    archs = parsed.get("architectures") or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        tested = ", ".join(SUPPORTED_ARCHITECTURES)
        raise StartupError(
            f"model.path {str(path)!r}: architecture {archs or 'not named'} is not supported "
            f"(tested: {tested}); the learner's sharding and the weight sync are only known "
            "to be right for those"
        )


def check_gpu_request(sync_backend: str) -> None:
    """NCCL asked for on a machine where CUDA sees no GPU."""
    if sync_backend != "nccl":
        return
    import torch

    if not torch.cuda.is_available():
        raise StartupError(
            "sync.backend = 'nccl' needs a CUDA GPU, and none is visible here (use 'auto' or "
            "'gloo' on CPU)"
        )


__all__ = [
    "EXIT_BAD_SETUP",
    "EXIT_RESTART",
    "SUPPORTED_ARCHITECTURES",
    "FatalError",
    "MustRestart",
    "StartupError",
    "check_gpu_request",
    "check_model_folder",
    "wait_for_redis",
]
