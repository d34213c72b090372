import contextlib

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.schemas import (
    Rollout,
    Sampling,
    SchemaError,
    ScoredRollout,
    Task,
    decode_rollout,
    decode_scored,
    decode_task,
    encode_rollout,
    encode_scored,
    encode_task,
)


def make_task() -> Task:
    return Task("t1", "p1", [5, 6, 7], 8, Sampling(0.7, 0.95, 64, 3), "42", 1, "math", 12.5)


def make_rollout(n: int = 4) -> Rollout:
    return Rollout(
        rollout_id="t1/0",
        task_id="t1",
        sample=0,
        prompt_ids=[5, 6, 7],
        completion_ids=list(range(10, 10 + n)),
        logprobs=[-0.5] * n,
        text="x </think> 42",
        gold="42",
        policy_version=3,
        version_max=4,
        finish_reason="length",
        generator_id="g1",
        off_policy=True,
        data_source="math",
        timings={"gen_s": 0.25},
    )


def test_task_round_trip():
    task = make_task()
    back = decode_task(encode_task(task))
    assert back.prompt_ids.tolist() == [5, 6, 7]
    assert back.prompt_ids.dtype == np.int32
    assert (back.task_id, back.n, back.gold, back.attempt, back.data_source) == (
        "t1",
        8,
        "42",
        1,
        "math",
    )
    assert back.sampling == Sampling(0.7, 0.95, 64, 3)
    assert encode_task(back) == encode_task(task)


def test_rollout_and_scored_round_trip():
    r = make_rollout()
    back = decode_rollout(encode_rollout(r))
    assert back.completion_ids.tolist() == [10, 11, 12, 13]
    assert back.logprobs.dtype == np.float32 and back.logprobs.tolist() == [-0.5] * 4
    assert (back.policy_version, back.version_max, back.off_policy) == (3, 4, True)
    assert encode_rollout(back) == encode_rollout(r)
    s = ScoredRollout(r, 1.0, "ok", "42", "v1", 3.5)
    sb = decode_scored(encode_scored(s))
    assert (sb.reward, sb.status, sb.extracted, sb.verifier_id) == (1.0, "ok", "42", "v1")
    assert encode_scored(sb) == encode_scored(s)


def test_tokens_travel_as_packed_bytes():
    raw = msgspec.msgpack.decode(encode_rollout(make_rollout(1000)))
    assert isinstance(raw["completion_ids"], bytes) and len(raw["completion_ids"]) == 4000
    assert isinstance(raw["logprobs"], bytes) and len(raw["logprobs"]) == 4000


def mutate(payload: bytes, **changes) -> bytes:
    m = msgspec.msgpack.decode(payload)
    for k, v in changes.items():
        if v is KeyError:
            del m[k]
        else:
            m[k] = v
    return msgspec.msgpack.encode(m)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"completion_ids": b"\x01\x02\x03"}, "not a multiple of 4"),
        ({"logprobs": np.zeros(3, "<f4").tobytes()}, "3 logprobs for 4 completion tokens"),
        ({"logprobs": np.array([0, np.nan, 0, 0], "<f4").tobytes()}, "NaN"),
        ({"logprobs": np.array([0, -np.inf, 0, 0], "<f4").tobytes()}, "infinite"),
        pytest.param(
            {"logprobs": np.array([0, -1e30, 0, 0], "<f4").tobytes()},
            "absurd",
            marks=pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
        ),
        ({"completion_ids": np.array([1, -5, 2, 3], "<i4").tobytes()}, "negative token ids"),
        ({"completion_ids": b"", "logprobs": b""}, "empty completion"),
        ({"policy_version": "3"}, "Expected `int`, got `str` - at `$.policy_version`"),
        ({"off_policy": 1}, "Expected `bool`, got `int` - at `$.off_policy`"),
        ({"sample": True}, "Expected `int`, got `bool` - at `$.sample`"),
        ({"text": KeyError}, "Object missing required field `text`"),
        ({"finish_reason": "eos"}, "Invalid enum value 'eos' - at `$.finish_reason`"),
        ({"version_max": 1}, "version_max 1 < policy_version 3"),
        ({"kind": "task"}, "Invalid value 'task' - at `$.kind`"),
        ({"v": 99}, "unsupported wire version 99"),
        ({"timings": {"a": "b"}}, "Expected `float`, got `str` - at `$.timings[...]`"),
        ({"rollout_id": "x" * 300}, "Expected `str` of length <= 256 - at `$.rollout_id`"),
    ],
)
def test_bad_rollouts_raise_clear_errors(changes, message):
    with pytest.raises(SchemaError) as err:
        decode_rollout(mutate(encode_rollout(make_rollout()), **changes))
    assert str(err.value).startswith("rollout: ") and message in str(err.value)


def test_truncated_and_garbage_payloads():
    payload = encode_rollout(make_rollout())
    for cut in (1, 10, len(payload) // 2, len(payload) - 1):
        with pytest.raises(SchemaError, match="not a valid msgpack message"):
            decode_rollout(payload[:cut])
    with pytest.raises(SchemaError, match="Expected `object`, got `array`"):
        decode_rollout(msgspec.msgpack.encode([1, 2, 3]))
    with pytest.raises(SchemaError, match="payload must be bytes"):
        decode_rollout("text")  # type: ignore[arg-type]


def test_huge_declared_lengths_are_rejected_without_allocating():
    # a map header declaring 2**32-1 entries, and a bin header declaring 4 GiB, then nothing
    for payload in (b"\xdf\xff\xff\xff\xff", b"\x81\xa1d\xc6\xff\xff\xff\xff"):
        with pytest.raises(SchemaError):
            decode_task(payload)


def test_task_bad_fields():
    good = encode_task(make_task())
    with pytest.raises(SchemaError, match="'prompt_ids' is empty"):
        decode_task(mutate(good, prompt_ids=b""))
    with pytest.raises(SchemaError, match=r"'n' is 0 and there are no prefixes"):
        decode_task(mutate(good, n=0))
    with pytest.raises(SchemaError, match=r"Expected `int` >= 0 - at `\$\.n`"):
        decode_task(mutate(good, n=-1))
    with pytest.raises(SchemaError, match=r"field 'prefixes\[1\]' has 3 bytes"):
        decode_task(mutate(good, prefixes=[b"\x01\x00\x00\x00", b"\x01\x00\x00"]))
    with pytest.raises(SchemaError, match=r"Object missing required field `t` - at `\$\.sampling`"):
        decode_task(mutate(good, sampling={"p": 1.0, "m": 4}))
    with pytest.raises(SchemaError, match=r"sampling temperature -1\.0 out of range"):
        decode_task(mutate(good, sampling={"t": -1.0, "p": 1.0, "m": 4}))


def test_scored_status_must_be_known():
    s = encode_scored(ScoredRollout(make_rollout(), 0.0, "wrong"))
    with pytest.raises(SchemaError, match=r"Invalid enum value 'maybe' - at `\$\.status`"):
        decode_scored(mutate(s, status="maybe"))
    with pytest.raises(SchemaError, match="field 'reward' is not finite"):
        decode_scored(mutate(s, reward=float("inf")))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_only_ever_raise_schema_error(data):
    for decode in (decode_task, decode_rollout, decode_scored):
        with contextlib.suppress(SchemaError):
            decode(data)


def test_prefixes_and_prefix_len_travel_and_are_checked():
    task = make_task()
    task.prefixes = [[5, 6, 7], []]
    back = decode_task(encode_task(task))
    assert [p.tolist() for p in back.prefixes] == [[5, 6, 7], []]
    assert decode_task(encode_task(make_task())).prefixes == []  # none: the old message
    rollout = make_rollout()
    rollout.off_policy, rollout.prefix_len = True, 1
    got = decode_rollout(encode_rollout(rollout))
    assert (got.prefix_len, got.generated) == (1, True)
    wire = encode_rollout(rollout)
    n = len(rollout.completion_ids)
    with pytest.raises(SchemaError, match=rf"prefix_len {n + 1} > {n} completion tokens"):
        decode_rollout(mutate(wire, prefix_len=n + 1))
    with pytest.raises(SchemaError, match="prefix_len 1 on a rollout not off-policy"):
        decode_rollout(mutate(wire, off_policy=False))
    # an off-policy rollout from before prefixes is off-policy throughout
    assert decode_rollout(mutate(wire, prefix_len=None)).prefix_len == n


def test_version_starts_travel_say_each_tokens_version_and_are_checked():
    rollout = make_rollout(6)  # policy_version 3, version_max 4
    rollout.off_policy, rollout.prefix_len = True, 1
    rollout.version_starts = [(1, 3), (4, 4)]
    got = decode_rollout(encode_rollout(rollout))
    assert got.version_starts == [(1, 3), (4, 4)]
    assert got.token_versions().tolist() == [-1, 3, 3, 3, 4, 4]  # the prefix is no version's
    assert make_rollout(3).token_versions().tolist() == [-1, -1, -1]  # a whole trace
    plain = make_rollout(3)
    plain.off_policy, plain.prefix_len = False, 0
    assert plain.token_versions().tolist() == [3, 3, 3]
    wire = encode_rollout(rollout)
    for starts, message in [
        ([[4, 3], [1, 4]], "must start strictly increasing token indexes below 6"),
        ([[1, 3], [6, 4]], "must start strictly increasing token indexes below 6"),
        ([[1, 3], [4, 5]], "span versions 3-5, the rollout says 3-4"),
        ([[1, 2]], "span versions 2-2, the rollout says 3-4"),
    ]:
        with pytest.raises(SchemaError, match=message):
            decode_rollout(mutate(wire, version_starts=starts))
