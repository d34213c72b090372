"""Weight pushes into vLLM on a GPU (skipped where CUDA is absent).

NCCL refuses two ranks on one device, so the NCCL test needs two GPUs: the broadcaster on GPU
0, the generator on GPU 1. On a single GPU the same push goes over gloo (CUDA tensors packed
into CPU buckets, received on the CPU and loaded into the engine on the GPU).
"""

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
    publish_long_prompt,
    publish_tasks,
    rollouts_of,
    start_generator,
    state_dict,
    stop,
    wait_registered,
)

pytestmark = pytest.mark.gpu
GPU_TOL = max(TOL, 2e-3)  # GPU kernels differ from the CPU reference more than CPU vs CPU


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def push_and_check(backend, redis_url, run_name, resilient, rclient, tmp_path, models, env):
    tiny_model_dir, other_model_dir = models
    keys = Keys(run_name)
    proc = start_generator(
        redis_url,
        run_name,
        tiny_model_dir,
        tmp_path,
        "gpu-gen",
        "--sync.backend",
        backend,
        "--generator.gpu_memory_utilization",
        "0.3",
        env=env,
    )
    try:
        wait_registered(resilient, keys, "gpu-gen", proc, timeout_s=600)
        publish_long_prompt(resilient, keys, "before-long")  # fills the prefix cache
        wait_for(lambda: rclient.xlen(keys.stream("rollouts")) == 1, 300, "a version-0 rollout")
        broadcaster = WeightBroadcaster(
            SyncBoard(resilient, keys), SyncConfig(backend=backend, timeout_s=120)
        )
        assert broadcaster.backend == backend
        weights = {n: t.cuda() for n, t in state_dict(other_model_dir).items()}
        result = broadcaster.push(1, weights.items())
        assert result.ok and result.members == ["gpu-gen"], result
        publish_tasks(resilient, keys, 2)
        publish_long_prompt(resilient, keys, "after-long")
        wait_for(lambda: rclient.xlen(keys.stream("rollouts")) == 10, 300, "rollouts")
    finally:
        stop(proc)
    for r in rollouts_of(rclient, keys):
        if r.task_id == "before-long":
            continue
        assert r.policy_version == 1
        ref = hf_logprobs(other_model_dir, r.prompt_ids, r.completion_ids)
        assert (ref - torch.tensor(r.logprobs)).abs().max().item() < GPU_TOL, r.task_id


@pytest.mark.skipif(gpu_count() < 2, reason="NCCL needs the sender and vLLM on two GPUs")
def test_nccl_push_into_vllm_on_its_own_gpu(
    redis_url, run_name, resilient, rclient, tmp_path, tiny_model_dir, other_model_dir
):
    torch.cuda.set_device(0)
    models = (tiny_model_dir, other_model_dir)
    env = {"CUDA_VISIBLE_DEVICES": "1"}
    push_and_check("nccl", redis_url, run_name, resilient, rclient, tmp_path, models, env)


def test_gloo_push_of_cuda_tensors_into_vllm_on_one_gpu(
    redis_url, run_name, resilient, rclient, tmp_path, tiny_model_dir, other_model_dir
):
    models = (tiny_model_dir, other_model_dir)
    push_and_check("gloo", redis_url, run_name, resilient, rclient, tmp_path, models, None)
