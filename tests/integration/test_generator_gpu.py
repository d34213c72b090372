"""The NCCL weight-sync path with vLLM on a GPU (skipped where CUDA is absent)."""

import pytest
import torch

from common.config import SyncConfig
from common.transport import Keys
from common.transport.weight_sync import SyncBoard
from learner.broadcast import WeightBroadcaster
from tests.integration.helpers import wait_for
from tests.integration.test_generator import (
    TOL,
    hf_logprobs,
    publish_tasks,
    rollouts_of,
    start_generator,
    state_dict,
    stop,
    wait_registered,
)

pytestmark = pytest.mark.gpu


def test_nccl_push_into_vllm_on_gpu(
    redis_url, run_name, resilient, rclient, tmp_path, tiny_model_dir, other_model_dir
):
    keys = Keys(run_name)
    proc = start_generator(
        redis_url,
        run_name,
        tiny_model_dir,
        tmp_path,
        "gpu0",
        "--sync.backend",
        "nccl",
        "--generator.gpu_memory_utilization",
        "0.3",
    )
    try:
        wait_registered(resilient, keys, "gpu0", proc, timeout_s=600)
        broadcaster = WeightBroadcaster(
            SyncBoard(resilient, keys), SyncConfig(backend="nccl", timeout_s=120)
        )
        assert broadcaster.backend == "nccl"
        weights = {n: t.cuda() for n, t in state_dict(other_model_dir).items()}
        result = broadcaster.push(1, weights.items())
        assert result.ok and result.members == ["gpu0"], result
        publish_tasks(resilient, keys, 2)
        wait_for(lambda: rclient.xlen(keys.stream("rollouts")) == 8, 300, "rollouts")
    finally:
        stop(proc)
    for r in rollouts_of(rclient, keys):
        assert r.policy_version == 1
        ref = hf_logprobs(other_model_dir, r.prompt_ids, r.completion_ids)
        # GPU kernels differ from the CPU reference more than CPU vs CPU
        assert (ref - torch.tensor(r.logprobs)).abs().max().item() < max(TOL, 2e-3)
