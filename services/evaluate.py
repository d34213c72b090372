"""``luffy eval`` and ``luffy generate``: offline evaluation and inference on a model folder, as
LUFFY's ``generate_vllm.py`` does it.

Parts and ownership:
- ``load_benchmark`` reads our rows or LUFFY's ``valid.all.parquet`` layout (data_source,
  prompt chat list, reward_model.ground_truth; repeated rows are repeated samples) into
  ``Example``s; ``select`` applies ``--sources`` and ``--limit``.
- ``evaluate`` owns one run: it builds each prompt with the template (``own`` drops the
  data's system turn, as LUFFY's evaluation does), skips and reports prompts longer than the
  model's context, generates k samples per prompt (vLLM; the hf engine as fallback), scores
  them through the verifier's scoring pool (``math`` or multiple-choice ``choice`` per data
  source; the think split only when the prompt ends with ``<think>\n``, as LUFFY decides it)
  and appends one JSON line per sample to the output file, which makes a run resumable.
- ``summarize`` is the pure report: per data source avg@k (the mean over its samples) and
  pass@k (share of prompts with a correct sample), and the overall mean of the per-source
  avg@k (not pooled over sources).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.schemas import Sampling
from learner.data import BadRows, DataError, Example, benchmark_example, load_rows
from learner.evaluation import avg_and_pass
from learner.prompts import THINK_OPEN, prompt_text, text_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOptions:
    samples: int = 1
    temperature: float = 0.6
    top_p: float = 1.0
    max_tokens: int = 8192
    template: str = "own"
    think_tags: bool | None = None  # default: when the prompt ends with "<think>\n" (LUFFY)
    drop_system: bool = True  # ``own``: LUFFY's evaluation removes the data's system turn
    batch: int = 64
    timeout_s: float = 5.0
    seed: int = 0
    limit: int | None = None  # the first N prompts (after ``sources``)
    sources: tuple[str, ...] | None = None  # only these data sources

    def sampling(self, max_tokens: int | None = None) -> Sampling:
        return Sampling(self.temperature, self.top_p, max_tokens or self.max_tokens, self.seed)


def load_benchmark(path: str | Path) -> tuple[list[Example], BadRows]:
    """Our format, or LUFFY's evaluation layout (answer in reward_model.ground_truth)."""
    return load_rows(path, benchmark_example)


def select(examples: list[Example], opts: EvalOptions) -> list[Example]:
    """``opts.sources`` (each must exist in the file) then the first ``opts.limit``."""
    if opts.sources:
        known = sorted({e.data_source for e in examples})
        unknown = [s for s in opts.sources if s not in known]
        if unknown:
            raise DataError(f"unknown data source(s) {', '.join(unknown)}; the file has {known}")
        examples = [e for e in examples if e.data_source in opts.sources]
    return examples[: opts.limit] if opts.limit is not None else examples


def summarize(records: Iterable[dict[str, Any]], skipped: list[dict] | None = None) -> dict:
    """Per data source: prompts, samples, avg@k, pass@k; the overall mean of avg@k; the
    prompts skipped (too long) with their ids. Samples of one prompt are grouped by its text
    where rows carry it (LUFFY's files repeat a row k times), else by id."""
    by_prompt: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in records:
        by_prompt[(r["data_source"], r.get("prompt", r["id"]))].append(float(r["reward"]))
    by_source: dict[str, list[list[float]]] = defaultdict(list)
    for (source, _), rewards in sorted(by_prompt.items()):
        by_source[source].append(rewards)
    report = {}
    for source, per_prompt in by_source.items():
        avg, passed = avg_and_pass(per_prompt)
        report[source] = {
            "prompts": len(per_prompt),
            "samples": sum(len(rs) for rs in per_prompt),
            "avg_at_k": avg,
            "pass_at_k": passed,
        }
    overall = sum(v["avg_at_k"] for v in report.values()) / len(report) if report else 0.0
    summary: dict[str, Any] = {"sources": report, "overall_avg_at_k": overall}
    if skipped:
        summary["skipped"] = {"count": len(skipped), "prompts": skipped}
    return summary


def luffy_log_lines(summary: dict[str, Any]) -> str:
    """The ``<source>: <accuracy>`` lines LUFFY's ``collect_results.py`` reads from a log."""
    lines = [f"{source}: {s['avg_at_k']}" for source, s in summary["sources"].items()]
    return "\n".join([*lines, f"avg acc: {summary['overall_avg_at_k']}"]) + "\n"


def _done_samples(out: Path) -> tuple[list[dict], set[tuple[str, int]]]:
    rows: list[dict] = []
    if out.exists():
        for line in out.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by an interrupted run: that sample is redone
    return rows, {(r["id"], int(r["sample"])) for r in rows}


def _engine(model: Path, engine: str, opts: EvalOptions) -> Any:
    from common.config import load_config
    from generator.engines import make_engine

    cfg = load_config(
        overrides=["--model.path", str(model), "--generator.engine", engine], environ={}
    )
    try:
        return make_engine(cfg, seed=opts.seed)
    except ImportError as exc:
        if engine != "vllm":
            raise
        log.warning("vLLM unavailable (%s); falling back to the hf engine", exc)
        return make_engine(
            cfg.model_copy(update={"generator": cfg.generator.model_copy(update={"engine": "hf"})}),
            seed=opts.seed,
        )


@dataclass(frozen=True)
class Prepared:
    """One prompt ready to generate: its text and ids, whether its answers need the think
    split, and how many tokens its samples may take."""

    example: Example
    text: str
    ids: list[int]
    think: bool
    max_tokens: int


def prepare_prompts(
    examples: list[Example], tokenizer: Any, max_model_len: int, opts: EvalOptions
) -> tuple[list[Prepared], list[dict]]:
    """Templated prompts; one that leaves no room for a token in the model's context is
    skipped and reported (id, data source, length) instead of failing the run."""
    ready, skipped = [], []
    for ex in examples:
        text = prompt_text(tokenizer, ex.prompt, opts.template, opts.drop_system)
        ids = text_ids(tokenizer, text)
        room = max_model_len - len(ids)
        if room < 1:
            skipped.append({"id": ex.id, "data_source": ex.data_source, "prompt_tokens": len(ids)})
            continue
        think = opts.think_tags if opts.think_tags is not None else text.endswith(THINK_OPEN)
        ready.append(Prepared(ex, text, ids, think, min(opts.max_tokens, room)))
    return ready, skipped


def evaluate(
    model: Path,
    data: Path,
    out: Path,
    opts: EvalOptions,
    engine: str = "vllm",
    progress: bool = True,
) -> dict[str, Any]:
    """Generate, score and append per-sample rows to ``out``; returns the summary."""
    from generator.engines import GenRequest
    from verifier.pool import ScoringPool

    examples = select(load_benchmark(data)[0], opts)
    rows, done = _done_samples(out)
    todo = [e for e in examples if any((e.id, k) not in done for k in range(opts.samples))]
    log.info("%d prompts, %d already complete in %s", len(examples), len(examples) - len(todo), out)
    skipped: list[dict] = []
    if todo:
        gen = _engine(model, engine, opts)
        pool = ScoringPool(workers=2, timeout_s=opts.timeout_s)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            ready, skipped = prepare_prompts(todo, gen.tokenizer, gen.max_model_len, opts)
            for item in skipped:
                log.warning("skipped prompt %s: %d tokens", item["id"], item["prompt_tokens"])
            for batch in _batches(ready, opts, progress):
                requests = [
                    GenRequest(p.ids, opts.samples, opts.sampling(p.max_tokens)) for p in batch
                ]
                new = _score(batch, gen.generate(requests), pool, done)
                with out.open("a") as fh:
                    fh.writelines(json.dumps(r) + "\n" for r in new)
                rows += new
        finally:
            pool.close()
            gen.close()
    wanted = {e.id for e in examples}
    chosen = (r for r in rows if r["id"] in wanted and int(r["sample"]) < opts.samples)
    return summarize(chosen, skipped)


def _batches(items: list[Prepared], opts: EvalOptions, progress: bool) -> Iterable[list]:
    chunks = [items[i : i + opts.batch] for i in range(0, len(items), opts.batch)]
    if not progress:
        yield from chunks
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("evaluating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("samples"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as bar:
        task = bar.add_task("eval", total=len(items) * opts.samples, rate="")
        for chunk in chunks:
            yield chunk
            bar.advance(task, len(chunk) * opts.samples)
            speed = bar.tasks[0].speed
            bar.update(task, rate=f"{speed:.1f} samples/s" if speed else "")


def _score(batch: list[Prepared], samples: list, pool: Any, done: set) -> list[dict]:
    from verifier.rewards import answer_part, reward_for_source

    futures = []
    for p, p_samples in zip(batch, samples, strict=True):
        ex, reward = p.example, reward_for_source(p.example.data_source)
        for k, s in enumerate(p_samples):
            if (ex.id, k) in done:
                continue
            response = THINK_OPEN + s.text if p.think else s.text  # LUFFY puts the tag back
            fut = pool.submit(reward, response, ex.answer, p.think)
            futures.append((p, k, s, response, reward, fut))
    rows = []
    for p, k, s, response, reward, fut in futures:
        v, ex = fut.result(), p.example
        judged = answer_part(response, p.think)
        rows.append(
            {
                "id": ex.id,
                "data_source": ex.data_source,
                "sample": k,
                "gold": ex.answer,
                "response": s.text,
                "reward": v.reward,
                "status": v.status,
                "extracted": v.extracted,
                "reward_fn": reward,
                "finish_reason": s.finish_reason,
                "tokens": len(s.completion_ids),
                # the fields of LUFFY's generate_vllm.py output, for its tooling
                "prompt": p.text,
                "generated_text": response if judged is None else judged,
                "answer": ex.answer,
                "correctness": v.reward > 0,
            }
        )
    return rows


def report_table(summary: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table("data source", "prompts", "samples", "avg@k", "pass@k")
    for source, s in summary["sources"].items():
        table.add_row(
            source,
            str(s["prompts"]),
            str(s["samples"]),
            f"{100 * s['avg_at_k']:.1f}",
            f"{100 * s['pass_at_k']:.1f}",
        )
    table.add_row("overall (mean of avg@k)", "", "", f"{100 * summary['overall_avg_at_k']:.1f}", "")
    if skipped := summary.get("skipped"):
        table.add_row("skipped: longer than the context", str(skipped["count"]), "", "", "")
    return table


def generate_answer(model: Path, question: str, opts: EvalOptions, engine: str = "vllm") -> str:
    from generator.engines import GenRequest

    gen = _engine(model, engine, opts)
    try:
        ids = text_ids(gen.tokenizer, prompt_text(gen.tokenizer, question, opts.template))
        (sample,) = gen.generate([GenRequest(ids, 1, opts.sampling())])[0]
        return sample.text
    finally:
        gen.close()


__all__ = [
    "EvalOptions",
    "Prepared",
    "evaluate",
    "generate_answer",
    "load_benchmark",
    "luffy_log_lines",
    "prepare_prompts",
    "report_table",
    "select",
    "summarize",
]
