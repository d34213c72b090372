"""The records the streams carry, as Python objects: ``Task``, ``Rollout``, ``ScoredRollout``
(their msgpack form and its validation are in ``common.wire``). No torch here: arrays are
numpy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

WIRE_VERSION = 1
MAX_TOKENS = 1 << 20  # per array; far above any real prompt or completion
MAX_TEXT_CHARS = 8 << 20
MAX_MESSAGE_BYTES = 256 << 20
FinishReason = Literal["stop", "length", "abort"]
Status = Literal["ok", "wrong", "unparsable", "no_think_tag", "timeout", "error"]  # verdicts
FINISH_REASONS: tuple[str, ...] = get_args(FinishReason)
STATUSES: tuple[str, ...] = get_args(Status)

_I32 = np.dtype("<i4")
_F32 = np.dtype("<f4")


class SchemaError(ValueError):
    """A message that cannot be decoded; the text names the kind and the field."""


def pack_tokens(ids: Any) -> bytes:
    arr = np.asarray(ids, dtype=_I32)
    if arr.ndim != 1:
        raise SchemaError(f"token ids must be one-dimensional, got shape {arr.shape}")
    return arr.tobytes()


def pack_floats(values: Any) -> bytes:
    arr = np.asarray(values, dtype=_F32)
    if arr.ndim != 1:
        raise SchemaError(f"float arrays must be one-dimensional, got shape {arr.shape}")
    return arr.tobytes()


@dataclass(slots=True)
class Sampling:
    """How to sample a task's completions (the engine maps it to its own parameters)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None


@dataclass(slots=True)
class Task:
    """One prompt to sample ``n`` completions for, plus one completion per entry of
    ``prefixes`` (samples ``n``, ``n + 1``, ...): the policy continues the prompt after that
    leading part of the off-policy trace (LUFFY's partial prefixes)."""

    task_id: str
    prompt_id: str
    prompt_ids: np.ndarray
    n: int
    sampling: Sampling
    gold: str
    attempt: int = 0
    data_source: str = ""
    created: float = 0.0
    prefixes: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prompt_ids = np.asarray(self.prompt_ids, dtype=_I32)
        self.prefixes = [np.asarray(p, dtype=_I32) for p in self.prefixes]


@dataclass(slots=True)
class Rollout:
    """One sampled (or off-policy) completion of a task, with behaviour log-probs.

    ``policy_version`` is the oldest policy version any of its tokens was sampled with (the
    learner judges staleness by it) and ``version_max`` the newest (the same when no weight
    push landed while it was sampled; defaults to ``policy_version``). The first
    ``prefix_len`` completion tokens are off-policy (a trace, or the trace prefix a generated
    continuation follows; their log-probs are 0); ``off_policy`` says there are any, and an
    off-policy rollout without ``prefix_len`` is off-policy throughout. ``version_starts``
    says which version sampled which generated tokens when a push landed mid-sequence:
    ``(start, version)`` pairs, completion tokens from ``start`` to the next start (or the
    end) were sampled with ``version`` (empty: every generated token with
    ``policy_version``)."""

    rollout_id: str
    task_id: str
    sample: int
    prompt_ids: np.ndarray
    completion_ids: np.ndarray
    logprobs: np.ndarray
    text: str
    gold: str
    policy_version: int
    finish_reason: str = "stop"
    generator_id: str = ""
    off_policy: bool = False
    version_max: int | None = None
    data_source: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    prefix_len: int | None = None
    version_starts: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prompt_ids = np.asarray(self.prompt_ids, dtype=_I32)
        self.completion_ids = np.asarray(self.completion_ids, dtype=_I32)
        self.logprobs = np.asarray(self.logprobs, dtype=_F32)
        if self.version_max is None:
            self.version_max = self.policy_version
        if self.prefix_len is None:
            self.prefix_len = len(self.completion_ids) if self.off_policy else 0

    @property
    def generated(self) -> bool:
        """Whether any of its tokens was sampled by the policy (a staleness to judge)."""
        return self.prefix_len < len(self.completion_ids)

    def token_versions(self) -> np.ndarray:
        """The policy version of each completion token [T] (off-policy prefix tokens: -1)."""
        out = np.full(len(self.completion_ids), self.policy_version, dtype=np.int64)
        for start, version in self.version_starts:  # each span runs to the end, the next cuts it
            out[start:] = version
        out[: self.prefix_len] = -1
        return out


@dataclass(slots=True)
class ScoredRollout:
    """A rollout plus its reward, as the verifier judged it."""

    rollout: Rollout
    reward: float
    status: str
    extracted: str = ""
    verifier_id: str = ""
    score_ms: float = 0.0
