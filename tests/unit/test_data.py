import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from learner.data import DataError, load_examples, prepare, read_records


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_bad_rows_are_skipped_counted_and_reported(tmp_path, caplog):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "What is 1 + 1?", "answer": "2", "target": "<think>1+1</think> \\boxed{2}"},
            {"prompt": "no answer"},
            "{not json",
            {"prompt": "", "answer": "1"},
            {"prompt": [{"role": "user", "content": "chat"}], "answer": 3},
            {"prompt": 42, "answer": "1"},
            ["a", "list"],
        ],
    )
    examples, bad = load_examples(path)
    assert [e.answer for e in examples] == ["2", "3"]
    assert examples[1].prompt == (("user", "chat"),)
    assert bad.count == 5
    assert (
        bad.examples[0]
        == "row 2: not valid JSON (Expecting property name enclosed in double quotes)"
    )
    assert "row 1: missing 'answer'" in bad.examples
    assert "row 3: 'prompt' is empty" in bad.examples
    assert "row 5: 'prompt' must be text or a chat list, got int" in bad.examples
    assert "skipped 5 bad row(s)" in caplog.text


def test_unusable_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_examples(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match=r"unsupported data format '\.csv'"):
        read_records(tmp_path.joinpath("x.csv").touch() or tmp_path / "x.csv", None)
    with pytest.raises(DataError, match="no usable rows"):
        load_examples(write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}]))


def test_prepare_luffy_release_format(tmp_path):
    rows = [
        {
            "data_source": "openr1",
            "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Q1"}],
            "target": [{"role": "assistant", "content": "<think>t</think> \\boxed{1}"}],
            "reward_model": {"ground_truth": "1", "style": "rule"},
        },
        {
            "data_source": "openr1",
            "prompt": [{"role": "user", "content": "Q2"}],
            "target": [],
            "reward_model": {"ground_truth": None},
        },
    ]
    src = tmp_path / "luffy.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    written, bad = prepare(src, tmp_path / "ours.jsonl")
    assert written == 1 and bad.count == 1 and "missing 'answer'" in bad.examples[0]
    (ex,), _ = load_examples(tmp_path / "ours.jsonl")
    assert ex.prompt == (("system", "sys"), ("user", "Q1"))
    assert (ex.answer, ex.target, ex.data_source) == ("1", "<think>t</think> \\boxed{1}", "openr1")


def test_prepare_openr1_format_prefers_a_verified_generation(tmp_path):
    src = write_jsonl(
        tmp_path / "r1.jsonl",
        [
            {
                "problem": "P",
                "answer": "7",
                "generations": ["wrong", "right"],
                "correctness_math_verify": [False, True],
                "uuid": "u1",
            },
            {"problem": "P2", "answer": "8", "generations": ["only"]},
        ],
    )
    written, _ = prepare(src, tmp_path / "ours.parquet")
    examples, _ = load_examples(tmp_path / "ours.parquet")
    assert written == 2
    assert [(e.id, e.target) for e in examples] == [("u1", "right"), ("1", "only")]
