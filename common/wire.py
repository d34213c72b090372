"""The wire form of the records: what travels on the ``prompts``, ``rollouts`` and ``scored``
streams.

Each message is one msgpack map with a schema version ``v`` and its ``kind``. Token ids
travel as packed little-endian int32 bytes and log-probs as packed little-endian float32
bytes (not lists). ``decode_*`` validates every field (presence, type, size, consistency;
msgspec checks the types while decoding) and raises ``SchemaError`` naming the message kind
and the field; consumers send such entries to the deadletter stream with that message.
"""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Any

import msgspec
import numpy as np

from common.records import (
    _F32,
    _I32,
    MAX_MESSAGE_BYTES,
    MAX_TEXT_CHARS,
    MAX_TOKENS,
    WIRE_VERSION,
    FinishReason,
    Rollout,
    Sampling,
    SchemaError,
    ScoredRollout,
    Status,
    Task,
    pack_floats,
    pack_tokens,
)

# --------------------------------------------------------------------------- wire structs
# msgspec validates presence and types while decoding (fast, and its errors name the field);
# the checks msgspec cannot express (array sizes, consistency, finiteness) follow in Python.

_Id = Annotated[str, msgspec.Meta(max_length=256)]
_Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=1 << 62)]


class _SamplingWire(msgspec.Struct, forbid_unknown_fields=False):
    t: float
    p: Annotated[float, msgspec.Meta(gt=0, le=1)]
    m: Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKENS)]
    s: int | None = None


class _TaskWire(msgspec.Struct, tag_field="kind", tag="task", forbid_unknown_fields=False):
    v: int
    task_id: _Id
    prompt_id: _Id
    prompt_ids: memoryview
    n: Annotated[int, msgspec.Meta(ge=0, le=4096)]
    sampling: _SamplingWire
    gold: _Text
    attempt: _Count = 0
    data_source: _Id = ""
    created: float = 0.0
    prefixes: Annotated[list[memoryview], msgspec.Meta(max_length=4096)] = []


class _RolloutWire(msgspec.Struct, tag_field="kind", tag="rollout", forbid_unknown_fields=False):
    v: int
    rollout_id: _Id
    task_id: _Id
    sample: Annotated[int, msgspec.Meta(ge=0, le=1 << 20)]
    # memoryview: msgspec hands out views into the payload instead of copying the arrays
    prompt_ids: memoryview
    completion_ids: memoryview
    logprobs: memoryview
    text: _Text
    gold: _Text
    policy_version: _Count
    finish_reason: FinishReason
    version_max: _Count | None = None
    generator_id: _Id = ""
    off_policy: bool = False
    data_source: _Id = ""
    timings: Annotated[dict[str, float], msgspec.Meta(max_length=64)] = {}
    prefix_len: _Count | None = None
    version_starts: Annotated[list[tuple[_Count, _Count]], msgspec.Meta(max_length=4096)] = []


class _ScoredWire(msgspec.Struct, tag_field="kind", tag="scored", forbid_unknown_fields=False):
    v: int
    rollout: _RolloutWire
    reward: float
    status: Status
    extracted: _Text = ""
    verifier_id: _Id = ""
    score_ms: float = 0.0


_ENCODER = msgspec.msgpack.Encoder()
_DECODERS = {
    kind: msgspec.msgpack.Decoder(cls)
    for kind, cls in (("task", _TaskWire), ("rollout", _RolloutWire), ("scored", _ScoredWire))
}


# --------------------------------------------------------------------------- encoding


def _rollout_wire(r: Rollout) -> _RolloutWire:
    return _RolloutWire(
        v=WIRE_VERSION,
        rollout_id=r.rollout_id,
        task_id=r.task_id,
        sample=r.sample,
        prompt_ids=pack_tokens(r.prompt_ids),
        completion_ids=pack_tokens(r.completion_ids),
        logprobs=pack_floats(r.logprobs),
        text=r.text,
        gold=r.gold,
        policy_version=r.policy_version,
        finish_reason=r.finish_reason,
        version_max=r.version_max,
        generator_id=r.generator_id,
        off_policy=r.off_policy,
        data_source=r.data_source,
        timings=dict(r.timings),
        prefix_len=r.prefix_len,
        version_starts=list(r.version_starts),
    )


def encode_task(t: Task) -> bytes:
    s = t.sampling
    return _ENCODER.encode(
        _TaskWire(
            v=WIRE_VERSION,
            task_id=t.task_id,
            prompt_id=t.prompt_id,
            prompt_ids=pack_tokens(t.prompt_ids),
            n=t.n,
            sampling=_SamplingWire(s.temperature, s.top_p, s.max_new_tokens, s.seed),
            gold=t.gold,
            attempt=t.attempt,
            data_source=t.data_source,
            created=t.created,
            prefixes=[pack_tokens(p) for p in t.prefixes],
        )
    )


def encode_rollout(rollout: Rollout) -> bytes:
    return _ENCODER.encode(_rollout_wire(rollout))


def encode_scored(scored: ScoredRollout) -> bytes:
    return _ENCODER.encode(
        _ScoredWire(
            v=WIRE_VERSION,
            rollout=_rollout_wire(scored.rollout),
            reward=float(scored.reward),
            status=scored.status,
            extracted=scored.extracted,
            verifier_id=scored.verifier_id,
            score_ms=float(scored.score_ms),
        )
    )


# --------------------------------------------------------------------------- decoding


def _wire(data: bytes, kind: str) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SchemaError(f"{kind}: payload must be bytes, got {type(data).__name__}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise SchemaError(f"{kind}: payload of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        wire = _DECODERS[kind].decode(data)
    except msgspec.ValidationError as exc:
        raise SchemaError(f"{kind}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise SchemaError(f"{kind}: not a valid msgpack message ({exc})") from None
    if wire.v != WIRE_VERSION:
        raise SchemaError(f"{kind}: unsupported wire version {wire.v!r}")
    return wire


def _array(kind: str, name: str, raw: memoryview, dtype: np.dtype) -> np.ndarray:
    if len(raw) % dtype.itemsize:
        raise SchemaError(
            f"{kind}: field {name!r} has {len(raw)} bytes, not a multiple of {dtype.itemsize}"
        )
    if len(raw) > MAX_TOKENS * dtype.itemsize:
        raise SchemaError(f"{kind}: field {name!r} longer than {MAX_TOKENS} elements")
    return np.frombuffer(raw, dtype=dtype)


def _tokens(kind: str, name: str, raw: memoryview) -> np.ndarray:
    arr = _array(kind, name, raw, _I32)
    # A little-endian int32 is negative iff its last byte has the top bit set; isascii()
    # checks exactly that on every 4th byte, an order of magnitude cheaper than arr.min().
    if not raw.tobytes()[3::4].isascii():
        raise SchemaError(f"{kind}: field {name!r} holds negative token ids")
    return arr


def _finite(kind: str, name: str, value: float) -> float:
    if not math.isfinite(value):
        raise SchemaError(f"{kind}: field {name!r} is not finite ({value})")
    return value


def decode_task(data: bytes) -> Task:
    w = _wire(data, "task")
    prompt = _tokens("task", "prompt_ids", w.prompt_ids)
    if prompt.size == 0:
        raise SchemaError("task: field 'prompt_ids' is empty")
    if w.n + len(w.prefixes) == 0:
        raise SchemaError("task: field 'n' is 0 and there are no prefixes (nothing to sample)")
    s = w.sampling
    if not (s.t >= 0 and math.isfinite(s.t)):
        raise SchemaError(f"task: sampling temperature {s.t} out of range")
    return Task(
        task_id=w.task_id,
        prompt_id=w.prompt_id,
        prompt_ids=prompt,
        n=w.n,
        sampling=Sampling(s.t, s.p, s.m, s.s),
        gold=w.gold,
        attempt=w.attempt,
        data_source=w.data_source,
        created=_finite("task", "created", w.created),
        prefixes=[_tokens("task", f"prefixes[{i}]", p) for i, p in enumerate(w.prefixes)],
    )


def _rollout_from(w: _RolloutWire, kind: str) -> Rollout:
    completion = _tokens(kind, "completion_ids", w.completion_ids)
    if completion.size == 0:  # engines always return at least the EOS token
        raise SchemaError(f"{kind}: empty completion (no token to score or train on)")
    logprobs = _array(kind, "logprobs", w.logprobs, _F32)
    if logprobs.size != completion.size:
        raise SchemaError(
            f"{kind}: {logprobs.size} logprobs for {completion.size} completion tokens"
        )
    # NaN/inf anywhere make the dot product non-finite (3x cheaper than isfinite().all());
    # it also overflows for |logprob| > ~1e19, which is no log-probability either.
    if logprobs.size and not math.isfinite(float(logprobs.dot(logprobs))):
        raise SchemaError(f"{kind}: field 'logprobs' holds NaN, infinite or absurd values")
    version_max = w.policy_version if w.version_max is None else w.version_max
    if version_max < w.policy_version:
        raise SchemaError(f"{kind}: version_max {version_max} < policy_version {w.policy_version}")
    if w.prefix_len is not None and w.prefix_len > completion.size:
        raise SchemaError(
            f"{kind}: prefix_len {w.prefix_len} > {completion.size} completion tokens"
        )
    if w.prefix_len and not w.off_policy:
        raise SchemaError(f"{kind}: prefix_len {w.prefix_len} on a rollout not off-policy")
    _check_version_starts(kind, w, version_max, completion.size)
    return Rollout(
        rollout_id=w.rollout_id,
        task_id=w.task_id,
        sample=w.sample,
        prompt_ids=_tokens(kind, "prompt_ids", w.prompt_ids),
        completion_ids=completion,
        logprobs=logprobs,
        text=w.text,
        gold=w.gold,
        policy_version=w.policy_version,
        finish_reason=w.finish_reason,
        generator_id=w.generator_id,
        off_policy=w.off_policy,
        version_max=version_max,
        data_source=w.data_source,
        timings=w.timings,
        prefix_len=w.prefix_len,
        version_starts=[tuple(p) for p in w.version_starts],
    )


def _check_version_starts(kind: str, w: _RolloutWire, version_max: int, size: int) -> None:
    starts = [s for s, _ in w.version_starts]
    if any(b <= a for a, b in itertools.pairwise(starts)) or (starts and starts[-1] >= size):
        raise SchemaError(
            f"{kind}: version_starts {w.version_starts} must start strictly increasing "
            f"token indexes below {size}"
        )
    versions = [v for _, v in w.version_starts]
    if versions and (min(versions) != w.policy_version or max(versions) != version_max):
        raise SchemaError(
            f"{kind}: version_starts span versions {min(versions)}-{max(versions)}, the "
            f"rollout says {w.policy_version}-{version_max}"
        )


def decode_rollout(data: bytes) -> Rollout:
    return _rollout_from(_wire(data, "rollout"), "rollout")


def decode_scored(data: bytes) -> ScoredRollout:
    w = _wire(data, "scored")
    return ScoredRollout(
        rollout=_rollout_from(w.rollout, "scored"),
        reward=_finite("scored", "reward", w.reward),
        status=w.status,
        extracted=w.extracted,
        verifier_id=w.verifier_id,
        score_ms=w.score_ms,
    )


__all__ = [
    "decode_rollout",
    "decode_scored",
    "decode_task",
    "encode_rollout",
    "encode_scored",
    "encode_task",
]
