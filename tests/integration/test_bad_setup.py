"""Bad setup at start: each service exits 2 within seconds with one line naming the problem (no
traceback for an expected mistake), and ``luffy up`` stops and says which child refused."""

import json
import socket
import time

import pytest

from common.embedded_redis import EmbeddedRedis
from common.net import free_port
from tests.integration.helpers import spawn, spawn_up
from tests.integration.test_learner_service import write_task


def run_role(role, redis_url, run_name, tmp_path, model_dir, *extra):
    started = time.monotonic()
    proc = spawn(
        "-m",
        f"services.{role}",
        "--redis.url",
        redis_url,
        "--run.name",
        run_name,
        "--run.output_dir",
        str(tmp_path),
        "--model.path",
        str(model_dir),
        "--generator.engine",
        "hf",
        "--learner.train_file",
        str(write_task(tmp_path / "train.jsonl", 10)),
        *extra,
    )
    out = proc.output(timeout=120)
    return proc.returncode, out, time.monotonic() - started


def case_model_missing(tmp_path, model):
    return "generator", tmp_path / "nowhere", [], "is not a folder (no model there)"


def case_model_config_broken(tmp_path, model):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    return "learner", broken, [], "config.json does not parse"


def case_redis_unreachable(tmp_path, model):
    url = f"redis://127.0.0.1:{free_port()}/0"
    flags = ["--redis.url", url, "--redis.start_timeout_s", "2"]
    return "verifier", model, flags, f"redis at {url} is not reachable after 2s"


def case_no_usable_rows(tmp_path, model):
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"prompt": "no answer"}) + "\n")
    return "learner", model, ["--learner.train_file", str(empty)], "no usable rows"


def case_batch_larger_than_data(tmp_path, model):
    flags = ["--learner.batch_prompts", "16"]
    return "learner", model, flags, "learner.batch_prompts (16) is larger than the 10 usable rows"


def case_gpu_on_cpu(tmp_path, model):
    flags = ["--sync.backend", "nccl"]
    return "generator", model, flags, "sync.backend = 'nccl' needs a CUDA GPU"


def case_open_bind_without_token(tmp_path, model):
    flags = ["--services.host", "0.0.0.0"]
    return "verifier", model, flags, "services.host '0.0.0.0' is reachable from other machines"


def case_unknown_reward(tmp_path, model):
    flags = ["--verifier.reward", "json_anwser"]
    expected = (
        "verifier.reward: unknown reward function 'json_anwser'; built-in: auto, choice, exact, "
        "math; installed plugins (luffy.rewards): json_answer"
    )
    return "verifier", model, flags, expected


CASES = [
    case_open_bind_without_token,
    case_model_missing,
    case_model_config_broken,
    case_redis_unreachable,
    case_no_usable_rows,
    case_batch_larger_than_data,
    case_gpu_on_cpu,
    case_unknown_reward,
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.removeprefix("case_"))
def test_a_service_with_a_bad_setup_exits_2_with_one_clear_line(
    case, redis_url, run_name, rclient, tmp_path, tiny_model_dir, faults
):
    role, model, flags, expected = case(tmp_path, tiny_model_dir)
    rc, out, seconds = run_role(role, redis_url, run_name, tmp_path, model, *flags)
    assert rc == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    (line,) = [x for x in out.splitlines() if "cannot start:" in x]
    assert expected in line, line
    assert seconds < 60, seconds  # within seconds of start (most of it is importing torch)
    faults.add(
        f"bad setup: {case.__name__.removeprefix('case_')}", exit_code=rc, seconds=round(seconds, 1)
    )


def test_a_taken_port_is_named(redis_url, run_name, rclient, tmp_path, tiny_model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, out, _ = run_role(
            "verifier", redis_url, run_name, tmp_path, tiny_model_dir, "--services.port", str(port)
        )
    assert rc == 2 and "Traceback" not in out, out[-3000:]
    assert f"services.port {port} on 127.0.0.1 cannot be bound" in out


def test_luffy_up_stops_and_names_the_child_that_cannot_start(redis_url, tmp_path):
    data = tmp_path / "inputs"
    (data / "model").mkdir(parents=True)
    (data / "model" / "config.json").write_text('{"architectures": []}')  # no model_type
    started = time.monotonic()
    up = spawn_up(f"bad-{time.time_ns()}", redis_url, tmp_path, data)
    out = up.output(timeout=300)
    assert up.returncode == 2, out[-3000:]
    assert time.monotonic() - started < 180
    assert "cannot start: model.path" in out and "config.json has no 'model_type'" in out


@pytest.mark.parametrize("password", [None, "not-the-password"], ids=["none", "wrong"])
def test_a_redis_that_refuses_our_password_is_named(run_name, tmp_path, tiny_model_dir, password):
    """A Redis that requires a password we lack (or get wrong) stops the start at once with the
    setting to fix, instead of retrying it as an outage for redis.start_timeout_s."""
    with EmbeddedRedis(tmp_path / "redis", password="the-password") as server:
        flags = ["--redis.password", password] if password else []
        rc, out, seconds = run_role(
            "verifier", server.url, run_name, tmp_path, tiny_model_dir, *flags
        )
    assert rc == 2 and "Traceback" not in out, out[-3000:]
    (line,) = [x for x in out.splitlines() if "cannot start:" in x]
    assert "refuses us" in line and "redis.password" in line and "the-password" not in out
    assert seconds < 60
