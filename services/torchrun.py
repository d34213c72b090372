"""How ``luffy learner`` starts the learner's ranks on one node (torchrun, static rendezvous)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common.config import LearnerConfig


def launch_torchrun(lc: LearnerConfig, config: Path | None, args: list[str]) -> int:
    """Re-run this command as the learner's ranks on this node: ``nproc`` of them, joined with
    the other ``nnodes`` - 1 nodes' at ``master_addr:master_port`` (static rendezvous, so
    global rank = node_rank x nproc + local rank and rank 0, which drives the run, is on node
    0). A rank or node that dies fails the whole group (collectives time out after
    ``learner.collective_timeout_s``); the restart resumes from the last checkpoint."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={lc.nproc}"]
    cmd += [f"--nnodes={lc.nnodes}", f"--node-rank={lc.node_rank}"]
    cmd += [f"--master-addr={lc.master_addr}", f"--master-port={lc.master_port}"]
    cmd += ["-m", "services.learner"] + (["--config", str(config)] if config else []) + args
    return subprocess.call(cmd)


__all__ = ["launch_torchrun"]
