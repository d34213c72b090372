"""LoRA (``learner.lora``) through the loop: FSDP2 trains the adapters only (1 and 2 ranks
agree), the checkpoint holds the adapter in PEFT's format beside the merged HF folder, and the
merged weights pushed to a live vLLM generator make it serve what transformers computes with
PEFT's adapter applied to the base model: same greedy tokens, log-probs within 1e-4 (float32;
the tiny model and SmolLM2-135M, a Llama with a tied head)."""

from pathlib import Path

import pytest
import torch

from common.config import SyncConfig
from common.schemas import Sampling, Task, encode_task
from common.transport import Keys, StreamPublisher
from common.transport.weight_sync import SyncBoard
from learner.broadcast import WeightBroadcaster
from tests.integration.helpers import wait_for
from tests.integration.test_generator import (
    rollouts_of,
    start_generator,
    state_dict,
    stop,
    wait_registered,
)
from tests.integration.test_real_model import logprobs_of
from tests.integration.test_train import assert_same_training, run

TOL = 1e-4
LORA = ("--lora", 8, "--lr", "1e-2")  # a visible change after one step


@pytest.fixture(scope="module")
def smollm2(request):
    pytest.importorskip("gguf", reason="the real-model extra is not installed")
    from services.demo.real_model import build_smollm2

    return build_smollm2()


def adapted_model(base_dir, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


def test_fsdp2_trains_only_the_adapters_alike_on_one_and_two_ranks(tmp_path, tiny_model_dir):
    one = run(tmp_path, tiny_model_dir, "one", 2, *LORA)
    two = run(tmp_path, tiny_model_dir, "two", 2, *LORA, ranks=2)
    assert_same_training(one, two)
    # the push sends the base architecture's names, merged, in the serving dtype
    assert one["push"]["names_equal"] and one["push"]["rounded"]
    assert not any("lora" in name for name in one["checksum"])


@pytest.mark.parametrize("model", ["tiny", pytest.param("smollm2", marks=pytest.mark.slow)])
def test_a_lora_step_pushed_to_live_vllm_serves_the_adapted_policy(
    model, request, tmp_path, redis_url, run_name, resilient, rclient
):
    from transformers import AutoModelForCausalLM

    base_dir = request.getfixturevalue("tiny_model_dir" if model == "tiny" else "smollm2")
    trained = run(tmp_path, base_dir, "step", 1, *LORA, "--save-at", 1,
                  "--ckpt-root", tmp_path / "c")  # fmt: skip
    ckpt = Path(trained["checkpoints"][0])
    assert (ckpt / "adapter" / "adapter_model.safetensors").is_file()
    peft_model = adapted_model(base_dir, ckpt / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(ckpt / "hf", dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    prompt = [5, 6, 7, 8, 9, 10, 11]
    keys = Keys(run_name)
    proc = start_generator(redis_url, run_name, base_dir, tmp_path, "g1")
    try:
        wait_registered(resilient, keys, "g1", proc)
        broadcaster = WeightBroadcaster(SyncBoard(resilient, keys), SyncConfig(timeout_s=120))
        assert broadcaster.push(1, state_dict(ckpt / "hf").items()).ok
        tasks = [
            Task("greedy", "p0", prompt, 1, Sampling(0.0, 1.0, 12, 0), "1"),
            Task("sampled", "p0", prompt, 2, Sampling(1.0, 1.0, 12, 7), "1"),
        ]
        StreamPublisher(resilient, keys, "prompts").publish(
            [(t.task_id, encode_task(t)) for t in tasks]
        )
        wait_for(lambda: rclient.xlen(keys.stream("rollouts")) == 3, 300, "rollouts")
    finally:
        stop(proc)
    for r in rollouts_of(rclient, keys):
        assert r.policy_version == 1
        got = torch.tensor(r.logprobs)
        adapted = logprobs_of(peft_model, prompt, r.completion_ids)
        assert (adapted - got).abs().max().item() < TOL  # PEFT's own adapter math
        assert (logprobs_of(merged, prompt, r.completion_ids) - got).abs().max().item() < TOL
        assert (logprobs_of(base, prompt, r.completion_ids) - got).abs().max().item() > 1e-3
        if r.task_id == "greedy":
            ids = torch.tensor([prompt])
            with torch.no_grad():
                want = peft_model.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
            assert (
                list(r.completion_ids) == want[0, len(prompt) :].tolist()[: len(r.completion_ids)]
            )
