"""``luffy eval`` and ``luffy generate``: offline evaluation and inference on a model folder.

Parts and ownership:
- ``load_benchmark`` reads our rows or LUFFY's ``valid.all.parquet`` layout (data_source,
  prompt chat list, reward_model.ground_truth) into ``Example``s.
- ``evaluate`` owns one run: it generates k samples per prompt with an engine (vLLM; the hf
  engine as fallback), scores them through the verifier's scoring pool (hard time limit;
  ``math`` or multiple-choice ``choice`` reward per data source) and appends one JSON line per
  sample to the output file, which makes a run resumable: samples already there are skipped.
- ``summarize`` is the pure report: per data source avg@k (mean reward) and pass@k (share of
  prompts with a correct sample), and the overall mean of the per-source avg@k.
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
from learner.data import BadRows, Example, benchmark_example, load_rows, prompt_ids
from learner.evaluation import avg_and_pass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOptions:
    samples: int = 1
    temperature: float = 0.6
    top_p: float = 1.0
    max_tokens: int = 1024
    template: str = "own"
    think_tags: bool | None = None  # default: only with the "own" template
    batch: int = 64
    timeout_s: float = 5.0
    seed: int = 0

    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_p, self.max_tokens, self.seed)


def load_benchmark(path: str | Path) -> tuple[list[Example], BadRows]:
    """Our format, or LUFFY's evaluation layout (answer in reward_model.ground_truth)."""
    return load_rows(path, benchmark_example)


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per data source: n prompts, samples, avg@k, pass@k; plus the overall mean of avg@k."""
    by_prompt: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in records:
        by_prompt[(r["data_source"], r["id"])].append(float(r["reward"]))
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
    return {"sources": report, "overall_avg_at_k": overall}


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
    from verifier.rewards import reward_for_source

    examples, _ = load_benchmark(data)
    rows, done = _done_samples(out)
    todo = [e for e in examples if any((e.id, k) not in done for k in range(opts.samples))]
    log.info("%d prompts, %d already complete in %s", len(examples), len(examples) - len(todo), out)
    think = opts.think_tags if opts.think_tags is not None else opts.template == "own"
    if todo:
        gen = _engine(model, engine, opts)
        pool = ScoringPool(workers=2, timeout_s=opts.timeout_s)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            for batch in _batches(todo, opts.batch, progress):
                requests = [
                    GenRequest(
                        prompt_ids(gen.tokenizer, e.prompt, opts.template),
                        opts.samples,
                        opts.sampling(),
                    )
                    for e in batch
                ]
                samples = gen.generate(requests)
                new = _score(batch, samples, pool, done, think, reward_for_source)
                with out.open("a") as fh:
                    fh.writelines(json.dumps(r) + "\n" for r in new)
                rows += new
        finally:
            pool.close()
            gen.close()
    wanted = {e.id for e in examples}
    return summarize(r for r in rows if r["id"] in wanted and int(r["sample"]) < opts.samples)


def _batches(items: list, size: int, progress: bool) -> Iterable[list]:
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    if not progress:
        yield from chunks
        return
    from rich.progress import track

    yield from track(chunks, description="evaluating")


def _score(batch, samples, pool, done, think, reward_for_source) -> list[dict]:
    futures = []
    for ex, ex_samples in zip(batch, samples, strict=True):
        reward = reward_for_source(ex.data_source)
        for k, s in enumerate(ex_samples):
            if (ex.id, k) in done:
                continue
            futures.append((ex, k, s, reward, pool.submit(reward, s.text, ex.answer, think)))
    rows = []
    for ex, k, s, reward, fut in futures:
        v = fut.result()
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
    return table


def generate_answer(model: Path, question: str, opts: EvalOptions, engine: str = "vllm") -> str:
    from generator.engines import GenRequest

    gen = _engine(model, engine, opts)
    try:
        ids = prompt_ids(gen.tokenizer, question, opts.template)
        (sample,) = gen.generate([GenRequest(ids, 1, opts.sampling())])[0]
        return sample.text
    finally:
        gen.close()


__all__ = [
    "EvalOptions",
    "evaluate",
    "generate_answer",
    "load_benchmark",
    "report_table",
    "summarize",
]
