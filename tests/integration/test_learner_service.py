"""The learner with real Redis and real generator/verifier processes (hf engine, tiny model)."""

import itertools
import json

import httpx
import pytest

from common.config import load_config
from common.membership import list_members
from common.schemas import decode_rollout, decode_task
from common.transport import Keys, StreamPublisher
from common.transport.weight_sync import SyncBoard
from learner.checkpoint import list_checkpoints
from learner.data import load_examples
from learner.feeder import Feeder
from learner.objective import make_objective
from learner.tracking import tracker_row
from tests.integration.helpers import spawn, stop_services, wait_for
from tests.tracking_files import tensorboard_scalars, wandb_env, wandb_offline_run


def write_task(path, n=60):
    with path.open("w") as fh:
        for i in range(n):
            a, b = i % 10, (i * 7) % 10
            fh.write(
                json.dumps(
                    {
                        "prompt": f"What is {a} + {b}?",
                        "answer": str(a + b),
                        "target": f"<think> {a} + {b} = {a + b} </think> \\boxed{{{a + b}}}",
                        "data_source": "add",
                    }
                )
                + "\n"
            )
    return path


def test_feeder_caps_in_flight_tasks_and_resumes_its_cursor(
    run_name, resilient, rclient, tmp_path, tiny_model_dir
):
    from transformers import AutoTokenizer

    cfg = load_config(
        overrides=[
            "--model.path",
            str(tiny_model_dir),
            "--learner.batch_prompts",
            "4",
            "--algorithm.max_off_policy_steps",
            "1",
        ],
        environ={},
    )
    examples, _ = load_examples(write_task(tmp_path / "t.jsonl", 10))
    keys = Keys(run_name)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    def feeder():
        return Feeder(
            examples,
            tok,
            cfg,
            make_objective(cfg.algorithm),
            StreamPublisher(resilient, keys, "prompts"),
            StreamPublisher(resilient, keys, "rollouts"),
        )

    f = feeder()
    assert f.capacity == 8 and f.top_up() == 8 and f.top_up() == 0
    for task_id in ("e0-0", "e0-1", "e0-2"):
        f.resolve(task_id)
    assert f.top_up() == 3 and len(f.inflight) == 8
    tasks = [decode_task(fl[b"d"]) for _, fl in rclient.xrange(keys.stream("prompts"))]
    assert [t.task_id for t in tasks] == [f"e0-{i}" for i in range(8)] + ["e0-8", "e0-9", "e1-0"]
    assert tasks[0].n == 7 and tok.decode(tasks[0].prompt_ids).endswith("<|im_start|>assistant\n")
    traces = [decode_rollout(fl[b"d"]) for _, fl in rclient.xrange(keys.stream("rollouts"))]
    assert len(traces) == 11 and all(t.off_policy and not t.logprobs.any() for t in traces)
    assert traces[0].rollout_id == "e0-0/off0" and traces[0].sample == 7
    state = f.state()
    g = feeder()
    g.load_state(state)
    assert set(g.inflight) == set(f.inflight)
    f.resolve("e0-3")
    g.resolve("e0-3")
    before = rclient.xlen(keys.stream("prompts"))
    f.top_up()
    g.top_up()  # the same next task, same id: downstream dedupe makes it one task
    ids = [decode_task(fl[b"d"]).task_id for _, fl in rclient.xrange(keys.stream("prompts"))][
        before:
    ]
    assert ids == ["e1-1", "e1-1"]


def learner_args(redis_url, run_name, tmp_path, model_dir, data, *extra):
    return [
        "--redis.url",
        redis_url,
        "--run.name",
        run_name,
        "--run.output_dir",
        str(tmp_path),
        "--model.path",
        str(model_dir),
        "--generator.max_model_len",
        "256",
        "--learner.train_file",
        str(data),
        "--learner.batch_prompts",
        "4",
        "--learner.lr",
        "1e-4",
        "--learner.checkpoint_every",
        "2",
        "--generator.max_new_tokens",
        "16",
        "--algorithm.max_response_len",
        "16",
        *extra,
    ]


def start_helpers(redis_url, run_name, tmp_path, model_dir):
    common = [
        "--redis.url",
        redis_url,
        "--run.name",
        run_name,
        "--run.output_dir",
        str(tmp_path),
        "--model.path",
        str(model_dir),
    ]
    gen = spawn(
        "-m",
        "services.generator",
        *common,
        "--generator.engine",
        "hf",
        "--generator.max_model_len",
        "256",
    )
    ver = spawn("-m", "services.verifier", *common, "--verifier.workers", "1")
    return gen, ver


def stop(*procs):
    stop_services(*procs, timeout=60)


def test_learner_trains_syncs_checkpoints_and_resumes(
    redis_url, run_name, resilient, rclient, tmp_path, tiny_model_dir
):
    data = write_task(tmp_path / "train.jsonl")
    gen, ver = start_helpers(redis_url, run_name, tmp_path, tiny_model_dir)
    args = learner_args(redis_url, run_name, tmp_path, tiny_model_dir, data)
    try:
        first = spawn("-m", "services.learner", *args, "--learner.max_steps", "4")
        out = first.output(timeout=400)
        assert first.returncode == 0, out[-3000:]
        ckpts = list_checkpoints(str(tmp_path / run_name / "checkpoints"))
        assert [c.rsplit("_", 1)[1] for c in ckpts] == ["00000002", "00000004"]
        meta = json.loads(
            (tmp_path / run_name / "checkpoints" / "step_00000004" / "meta.json").read_text()
        )
        assert meta["step"] == 4 and meta["version"] == 4 and meta["resolved"]["trained"] >= 16
        assert SyncBoard(resilient, Keys(run_name)).policy_version() == 4

        second = spawn(
            "-m",
            "services.learner",
            *args,
            "--learner.max_steps",
            "6",
            "--learner.resume",
            "true",
            "--services.token",
            "tok",
        )
        members = wait_for(
            lambda: list_members(resilient, Keys(run_name), "learner"), 120, "learner"
        )
        status = wait_for(lambda: _status_at_step(members[0]["port"], 5), 300, "step 5")
        control = f"http://127.0.0.1:{members[0]['port']}/control/checkpoint"
        assert httpx.post(control).status_code == 401
        asked = httpx.post(control, headers={"Authorization": "Bearer tok"}).json()
        assert asked["checkpoint"] == "requested"
        out = second.output(timeout=400)
        assert second.returncode == 0, out[-3000:]
    finally:
        stop(gen, ver)
    assert "resumed from" in out and "step_00000004" in out
    assert status["policy_version"] >= 5  # 4, then the resume push, then step 5's push
    assert status["loss"] is not None and status["resolved"]["trained"] >= 16
    final = json.loads(
        (tmp_path / run_name / "checkpoints" / "step_00000006" / "meta.json").read_text()
    )
    assert final["step"] == 6 and final["version"] > 4
    pending = rclient.xpending(Keys(run_name).stream("scored"), "learner")["pending"]
    assert pending < 4 * 8  # only samples of groups still incomplete at the end stay unacked


def _status_at_step(port, step):
    try:
        status = httpx.get(f"http://127.0.0.1:{port}/status", timeout=5).json()
    except httpx.HTTPError:
        return None
    return status if status.get("step", 0) >= step else None


def test_two_rank_learner_under_torchrun(redis_url, run_name, resilient, tmp_path, tiny_model_dir):
    data = write_task(tmp_path / "train.jsonl")
    gen, ver = start_helpers(redis_url, run_name, tmp_path, tiny_model_dir)
    try:
        proc = spawn(
            "-m",
            "services.learner",
            *learner_args(redis_url, run_name, tmp_path, tiny_model_dir, data),
            "--learner.max_steps",
            "2",
            "--learner.nproc",
            "2",
        )
        out = proc.output(timeout=400)
    finally:
        stop(gen, ver)
    assert proc.returncode == 0, out[-3000:]
    meta = json.loads(
        (tmp_path / run_name / "checkpoints" / "step_00000002" / "meta.json").read_text()
    )
    assert meta["world"] == 2 and meta["step"] == 2


def test_a_fresh_learner_refuses_to_start_over_an_earlier_run(
    redis_url, run_name, rclient, tmp_path, tiny_model_dir
):
    """Same run name, no checkpoint, but Redis already marks ids done: starting over would
    stall on them, so the learner exits naming the run and the way out."""
    data = write_task(tmp_path / "train.jsonl")
    rclient.zadd(Keys(run_name).done("generators"), {"e0-0": 1.0})
    args = learner_args(redis_url, run_name, tmp_path, tiny_model_dir, data)
    proc = spawn("-m", "services.learner", *args, "--learner.max_steps", "2")
    out = proc.output(timeout=300)
    assert proc.returncode == 2 and "Traceback" not in out, out[-3000:]
    assert f"run {run_name!r} has no checkpoint" in out and "1 processed ids" in out

    (tmp_path / run_name / "checkpoints" / "step_00000002").mkdir(parents=True)
    (tmp_path / run_name / "checkpoints" / "step_00000002" / "meta.json").write_text("{}")
    proc = spawn("-m", "services.learner", *args, "--learner.max_steps", "2")
    out = proc.output(timeout=300)
    assert proc.returncode == 2 and "Traceback" not in out, out[-3000:]
    assert "already has checkpoints" in out and "--learner.resume true" in out


def test_partial_prefixes_end_to_end(redis_url, run_name, tmp_path, tiny_model_dir):
    """LUFFY's partial prefixes through the whole loop: the feeder gives each group one prefix
    of half its trace (``fixed`` from 0.5 to 1.0 over two trace samples) and one whole trace;
    the generator continues the prefix, the verifier scores prefix + continuation, and the
    learner trains the prefix off-policy and the continuation on-policy."""
    data = write_task(tmp_path / "train.jsonl")
    gen, ver = start_helpers(redis_url, run_name, tmp_path, tiny_model_dir)
    prefixes = [
        "--algorithm.n_on", "2", "--algorithm.n_off", "2",
        "--algorithm.prefix_strategy", "fixed",
        "--algorithm.min_prefix_ratio", "0.5", "--algorithm.max_prefix_ratio", "1.0",
    ]  # fmt: skip
    args = learner_args(redis_url, run_name, tmp_path, tiny_model_dir, data, *prefixes)
    try:
        proc = spawn("-m", "services.learner", *args, "--learner.max_steps", "2")
        out = proc.output(timeout=400)
    finally:
        stop(gen, ver)
    assert proc.returncode == 0, out[-3000:]
    rows = [json.loads(line) for line in (tmp_path / run_name / "metrics.jsonl").open()]
    steps = [r for r in rows if r.get("kind") == "train"]
    assert len(steps) == 2
    for r in steps:
        # 4 groups x (2 on-policy + 1 continued prefix + 1 whole trace): 4 continuations
        assert r["prefix_continued"] == 4
        assert 0 < r["off_token_share"] < 1


def test_sft_recipe_runs_without_generators(redis_url, run_name, tmp_path, tiny_model_dir):
    """LUFFY's SFT baseline as `luffy learner` alone: traces only, epochs cap the run, the LR
    warms up over 0.1 of it and follows a cosine to 0.1 x lr."""
    data = write_task(tmp_path / "train.jsonl", n=20)
    args = learner_args(redis_url, run_name, tmp_path, tiny_model_dir, data)
    sft = [
        "--algorithm.mode", "sft", "--algorithm.loss_agg", "token_mean",
        "--algorithm.entropy_coef", "0", "--learner.lr", "5e-5", "--learner.max_epochs", "2",
        "--learner.warmup_ratio", "0.1", "--learner.lr_schedule", "cosine",
        "--learner.max_steps", "1000",
    ]  # fmt: skip
    proc = spawn("-m", "services.learner", *args, *sft)
    out = proc.output(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    rows = [json.loads(line) for line in (tmp_path / run_name / "metrics.jsonl").open()]
    steps = [r for r in rows if r.get("kind") == "train"]
    # 20 rows / batch 4 = 5 steps an epoch, 2 epochs: 10 steps; warm-up round(0.1 * 10) = 1
    assert [r["step"] for r in steps] == list(range(1, 11))
    lrs = [r["lr"] for r in steps]  # the LR after each step's update
    assert lrs[0] == pytest.approx(5e-5) and lrs[-1] == pytest.approx(5e-6)
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    assert all(r["loss"] > 0 for r in steps)  # the NLL of the traces


def test_trackers_mirror_every_metrics_row(redis_url, run_name, tmp_path, tiny_model_dir):
    """Two SFT steps with both trackers on (W&B offline through WANDB_MODE): each holds every
    number of every metrics.jsonl row at its step."""
    data = write_task(tmp_path / "train.jsonl", n=8)
    args = learner_args(redis_url, run_name, tmp_path, tiny_model_dir, data)
    trackers = [
        "--algorithm.mode", "sft", "--learner.max_steps", "2",
        "--tracking.tensorboard", "{}", "--tracking.wandb.project", "luffy-test",
    ]  # fmt: skip
    proc = spawn("-m", "services.learner", *args, *trackers, env=wandb_env(tmp_path))
    out = proc.output(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    run_dir = tmp_path / run_name
    rows = [tracker_row(json.loads(line)) for line in (run_dir / "metrics.jsonl").open()]
    assert [step for step, _ in rows] == [1, 2]
    scalars = tensorboard_scalars(run_dir / "tensorboard")
    config, history = wandb_offline_run(run_dir)
    assert config["run"]["name"] == run_name and config["algorithm"]["mode"] == "sft"
    assert len(history) == 2
    for (step, values), logged in zip(rows, history, strict=True):
        assert "train/loss" in values and "train/lr" in values
        assert logged["step"] == step
        for name, value in values.items():
            assert logged[name] == pytest.approx(value), name
            assert (step, pytest.approx(value, rel=1e-6)) in scalars[name], name
