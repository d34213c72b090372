import hashlib

from common.config import TinyModelConfig
from learner.prompts import prompt_ids, prompt_text, trace_ids
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


def test_prompt_templates(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = prompt_ids(tok, "What is 2 + 3?", "own")
    assert tok.decode(ids) == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(prompt_ids(tok, "raw", "none")) == "raw"
    chat = (("system", "SYSX"), ("user", "Q"))
    # own keeps the data's turns (LUFFY's training); its offline evaluation drops the system
    assert prompt_text(tok, chat, "own").startswith("<|im_start|>system\nSYSX<|im_end|>")
    assert prompt_text(tok, chat, "own", drop_system=True) == (
        "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompt_text(tok, chat, "qwen") == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within "
        "\\boxed{}.<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompt_text(tok, chat, "simplerl") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nQ\n"
        "Please reason step by step, and put your final answer within\\boxed{{}}.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    prime = prompt_text(tok, chat, "prime")  # plain text, no chat markup, no system prompt
    assert prime.startswith("A conversation between User and Assistant.") and "SYSX" not in prime
    assert prime.endswith(
        "User: Q\n\nPresent the answer in LaTex format: \\boxed{Your answer}. Assistant:"
    )


def test_trace_tokens_follow_luffy(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    eos = tok.eos_token_id
    think = "<think>\n5 </think> \\boxed{5}"
    body = tok("5 </think> \\boxed{5}", add_special_tokens=False)["input_ids"]
    whole = tok(think, add_special_tokens=False)["input_ids"]
    # a think-template prompt (ends with "<think>\n"): the trace's own "<think>\n" is dropped
    think_prompt = "<|im_start|>assistant\n<think>\n"
    assert trace_ids(tok, think, think_prompt, 8192) == [*body, eos]
    # any other prompt keeps it
    assert trace_ids(tok, think, "<|im_start|>assistant\n", 8192) == [*whole, eos]
    # cut to max_prefix_len, then EOS appended, then cut again: an over-long trace has no EOS
    n = len(body)
    assert trace_ids(tok, think, think_prompt, n) == body  # exactly n tokens: EOS lost
    assert trace_ids(tok, think, think_prompt, n - 2) == body[: n - 2]
    assert trace_ids(tok, think, think_prompt, n + 1) == [*body, eos]  # room for it: kept


def test_a_think_template_model_sees_its_tag_once(tiny_model_dir):
    from transformers import AutoTokenizer

    from common.config import Config
    from learner.data import Example
    from learner.feeder import Feeder
    from learner.objective import make_objective
    from services.demo.tiny_model import CHAT_TEMPLATE

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = CHAT_TEMPLATE.replace("assistant\\n", "assistant\\n<think>\\n")
    cfg = Config.model_validate({"algorithm": {"max_prefix_len": 64}})
    ex = Example("0", "Q", "5", target="<think>\nadd 2 and 3 </think> \\boxed{5}")
    feeder = Feeder([ex], tok, cfg, make_objective(cfg.algorithm), None, None)
    prompt, trace, text = feeder.tokens(ex)
    assert tok.decode(prompt).endswith("assistant\n<think>\n")
    seen = tok.decode(prompt + trace)
    assert seen.count("<think>") == 1 and trace[-1] == tok.eos_token_id
    assert text == "add 2 and 3 </think> \\boxed{5}"  # what the verifier scores
    # a trace past max_prefix_len: cut, no EOS, and the verifier scores the cut text
    long = Example("1", "Q", "5", target="<think>\n" + "add " * 100 + "</think> \\boxed{5}")
    _, trace, text = feeder.tokens(long)
    assert len(trace) == 64 and trace[-1] != tok.eos_token_id and "</think>" not in text


def test_prepare_keeps_luffys_prompt_length_filter(tmp_path, tiny_model_dir):
    import json

    from typer.testing import CliRunner

    from services.cli import app

    rows = [
        {"prompt": "What is 2 + 3?", "answer": "5"},
        {"prompt": "add " * 300 + "?", "answer": "1"},  # ~300 tokens templated
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dst = tmp_path / "out.jsonl"
    args = ["prepare", str(src), str(dst), "--max-prompt-tokens", "100"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "needs --model" in refused.output
    done = CliRunner().invoke(app, [*args, "--model", str(tiny_model_dir)])
    assert done.exit_code == 0, done.output
    assert [json.loads(line)["answer"] for line in dst.read_text().splitlines()] == ["5"]
    assert "longer than 100" in done.output
    kept = CliRunner().invoke(app, ["prepare", str(src), str(dst)])
    assert kept.exit_code == 0 and len(dst.read_text().splitlines()) == 2
