"""Training data: our row format, loading with a bad-row report, conversion from LUFFY's and
OpenR1's releases (``luffy prepare``). Tokens are ``learner.prompts``.

Our row: ``prompt`` (text, or a chat list of {role, content}), ``answer`` (the gold answer),
``target`` (the off-policy reasoning trace, optional), ``data_source`` (optional), ``id``
(optional). A row with missing or bad fields is skipped and reported (count and the first
examples), never silently and never fatally.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
MAX_EXAMPLES_SHOWN = 5


class DataError(ValueError):
    """The data file itself cannot be used (missing, unreadable, unknown format)."""


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str | tuple[tuple[str, str], ...]  # text, or ((role, content), ...)
    answer: str
    target: str | None = None
    data_source: str = "unknown"

    def to_row(self) -> dict[str, Any]:
        prompt = (
            self.prompt
            if isinstance(self.prompt, str)
            else [{"role": r, "content": c} for r, c in self.prompt]
        )
        return {
            "id": self.id,
            "prompt": prompt,
            "answer": self.answer,
            "target": self.target,
            "data_source": self.data_source,
        }


@dataclass
class BadRows:
    """Rows skipped while loading or converting, with the first few reasons."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, index: int, reason: str) -> None:
        self.count += 1
        if len(self.examples) < MAX_EXAMPLES_SHOWN:
            self.examples.append(f"row {index}: {reason}")

    def summary(self, path: str | Path) -> str:
        shown = "; ".join(self.examples)
        return f"{path}: skipped {self.count} bad row(s) (first: {shown})"


# --------------------------------------------------------------------------- reading files


def read_records(path: str | Path, bad: BadRows) -> list[dict | None]:
    """Rows of a .jsonl/.json/.parquet file as dicts (None for a line that is not JSON)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:
            raise DataError(f"{path}: not a readable parquet file ({exc})") from None
    if suffix in (".jsonl", ".json"):
        rows: list[dict | None] = []
        with path.open(encoding="utf-8", errors="replace") as fh:
            for index, line in enumerate(fh):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    bad.add(index, f"not valid JSON ({exc.msg})")
                    rows.append(None)
        return rows
    raise DataError(f"{path}: unsupported data format {suffix!r} (use .jsonl or .parquet)")


def write_rows(path: str | Path, rows: Sequence[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        flat = [
            {
                **r,
                "prompt": json.dumps(r["prompt"])
                if not isinstance(r["prompt"], str)
                else r["prompt"],
            }
            for r in rows
        ]
        pq.write_table(pa.Table.from_pylist(flat), path)
        return
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- validation


def _text(value: Any, name: str, required: bool = True) -> str | None:
    if value is None:
        if required:
            raise ValueError(f"missing {name!r}")
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"{name!r} must be text, got {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"{name!r} is empty")
    return value


def _prompt(value: Any) -> str | tuple[tuple[str, str], ...]:
    if isinstance(value, str):
        if value.startswith("[") and value.endswith("]"):  # chat list stored as JSON text
            try:
                return _prompt(json.loads(value))
            except json.JSONDecodeError:
                pass
        if not value.strip():
            raise ValueError("'prompt' is empty")
        return value
    if isinstance(value, list | tuple) and value:
        turns = []
        for turn in value:
            if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
                raise ValueError("'prompt' chat turns need a text 'content'")
            turns.append((str(turn.get("role") or "user"), turn["content"]))
        return tuple(turns)
    raise ValueError(f"'prompt' must be text or a chat list, got {type(value).__name__}")


def to_example(row: Any, index: int) -> Example:
    """Validate one row of our format (raises ValueError naming the field)."""
    if not isinstance(row, dict):
        raise ValueError(f"row is {type(row).__name__}, not an object")
    return Example(
        id=str(row.get("id") if row.get("id") is not None else index),
        prompt=_prompt(row.get("prompt")),
        answer=_text(row.get("answer"), "answer"),
        target=_text(row.get("target"), "target", required=False) or None,
        data_source=_text(row.get("data_source"), "data_source", required=False) or "unknown",
    )


Converter = Callable[[dict, int], Example]


def convert_records(records: Iterable[dict | None], convert: Converter, bad: BadRows) -> list:
    """``convert(row, index)`` for every record; a bad row (not an object, or one the converter
    refuses with a ValueError) is skipped and counted in ``bad``, never fatal."""
    examples = []
    for index, row in enumerate(records):
        if row is None:  # read_records already counted it
            continue
        try:
            if not isinstance(row, dict):
                raise ValueError(f"row is {type(row).__name__}, not an object")
            examples.append(convert(row, index))
        except ValueError as exc:
            bad.add(index, str(exc))
    return examples


def load_rows(path: str | Path, convert: Converter) -> tuple[list[Example], BadRows]:
    """The rows of ``path`` as ``Example``s through ``convert``; bad rows skipped and logged."""
    bad = BadRows()
    examples = convert_records(read_records(path, bad), convert, bad)
    if bad.count:
        log.warning("%s", bad.summary(path))
    return examples, bad


def load_examples(path: str | Path) -> tuple[list[Example], BadRows]:
    """Our format from ``path``; bad rows are skipped, counted and logged; none usable is an
    error."""
    examples, bad = load_rows(path, to_example)
    if not examples:
        raise DataError(f"{path}: no usable rows ({bad.summary(path) if bad.count else 'empty'})")
    return examples, bad


# --------------------------------------------------------------------------- luffy prepare


def _from_luffy(row: dict, index: int) -> Example:
    reward_model = row.get("reward_model") or {}
    if not isinstance(reward_model, dict):
        raise ValueError("'reward_model' must be an object with 'ground_truth'")
    target = row.get("target")
    trace = None
    if isinstance(target, list | tuple) and target:
        first = target[0]
        trace = first.get("content") if isinstance(first, dict) else first
    elif isinstance(target, str):
        trace = target
    return to_example(
        {
            "id": row.get("id", index),
            "prompt": row.get("prompt"),
            "answer": reward_model.get("ground_truth"),
            "target": trace,
            "data_source": row.get("data_source"),
        },
        index,
    )


def _from_openr1(row: dict, index: int) -> Example:
    generations = row.get("generations") or []
    if not isinstance(generations, list | tuple):
        raise ValueError("'generations' must be a list of texts")
    correct = row.get("correctness_math_verify") or []
    trace = next((g for g, ok in zip(generations, correct, strict=False) if ok), None)
    trace = trace or (generations[0] if generations else None)
    return to_example(
        {
            "id": row.get("uuid", index),
            "prompt": row.get("problem"),
            "answer": row.get("answer"),
            "target": trace,
            "data_source": row.get("source") or "openr1",
        },
        index,
    )


CONVERTERS = {"luffy": _from_luffy, "openr1": _from_openr1, "ours": to_example}


def benchmark_example(row: dict, index: int) -> Example:
    """A benchmark row: LUFFY's evaluation layout (gold in ``reward_model.ground_truth``) or
    ours."""
    if "reward_model" in row and "answer" not in row:
        gold = (row.get("reward_model") or {}).get("ground_truth")
        row = {**row, "answer": gold, "id": row.get("id", index)}
    return to_example(row, index)


def detect_format(row: dict) -> str:
    if "reward_model" in row:
        return "luffy"
    if "problem" in row and "generations" in row:
        return "openr1"
    return "ours"


PromptLength = Callable[[Example], int]


def prepare(
    src: str | Path,
    dst: str | Path,
    fmt: str = "auto",
    max_prompt_tokens: int | None = None,
    prompt_length: PromptLength | None = None,
) -> tuple[int, BadRows]:
    """Convert ``src`` (LUFFY / OpenR1 / ours) into our format at ``dst``. With
    ``max_prompt_tokens`` a row whose templated prompt is longer (``prompt_length``) is left
    out and counted, as LUFFY's data loader filters prompts over ``max_prompt_length``."""
    bad = BadRows()
    records = read_records(src, bad)
    first = next((r for r in records if isinstance(r, dict)), None)
    if first is None:
        raise DataError(f"{src}: no rows to convert")
    fmt = detect_format(first) if fmt == "auto" else fmt
    if fmt not in CONVERTERS:
        raise DataError(f"unknown input format {fmt!r}; known: {sorted(CONVERTERS)}")
    examples = convert_records(records, CONVERTERS[fmt], bad)
    if max_prompt_tokens is not None and prompt_length is not None:
        kept = []
        for index, ex in enumerate(examples):
            if (n := prompt_length(ex)) > max_prompt_tokens:
                bad.add(index, f"prompt of {n} tokens is longer than {max_prompt_tokens}")
            else:
                kept.append(ex)
        examples = kept
    write_rows(dst, [e.to_row() for e in examples])
    return len(examples), bad


def iter_rows(examples: Iterable[Example]) -> Iterable[dict]:
    return (asdict(e) for e in examples)


__all__ = [
    "BadRows",
    "DataError",
    "Example",
    "benchmark_example",
    "convert_records",
    "load_examples",
    "load_rows",
    "prepare",
    "read_records",
    "to_example",
    "write_rows",
]
