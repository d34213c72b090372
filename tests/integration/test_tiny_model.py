import hashlib

from common.config import TinyModelConfig
from learner.data import prompt_ids, trace_ids
from services.demo.tiny_model import build_tiny_model


def test_transformers_loads_and_generates_from_the_tiny_model(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(chat, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    assert tok.convert_tokens_to_ids("</think>") != tok.unk_token_id
    assert len(tok.encode("</think>")) == 1
    head = model.config.hidden_size // model.config.num_attention_heads
    assert head >= 32  # vLLM CPU attention needs head_dim >= 32
    assert next(model.parameters()).dtype == torch.float32


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path, tiny_model_dir):
    shape = TinyModelConfig()
    again = build_tiny_model(tmp_path / "again", shape, seed=0)
    other = build_tiny_model(tmp_path / "other", shape, seed=1)

    def digest(folder, name):
        return hashlib.sha256((folder / name).read_bytes()).hexdigest()

    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert digest(again, name) == digest(tiny_model_dir, name)
    assert digest(other, "model.safetensors") != digest(again, "model.safetensors")


def test_prompt_and_trace_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = prompt_ids(tok, "What is 2 + 3?", "own")
    assert tok.decode(ids) == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(prompt_ids(tok, "raw", "none")) == "raw"
    qwen = tok.decode(prompt_ids(tok, (("system", "SYSX"), ("user", "Q")), "qwen"))
    assert qwen.startswith("<|im_start|>system\nPlease reason step by step") and "SYSX" not in qwen
    trace = trace_ids(tok, "<think> 5 </think> \\boxed{5}")
    assert trace[-1] == tok.eos_token_id and tok.convert_tokens_to_ids("</think>") in trace
