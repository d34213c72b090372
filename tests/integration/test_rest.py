"""Every service's REST API under schemathesis (no 5xx for anything it sends), bearer-token
control routes, and loopback binding by default."""

import shutil
import subprocess
import sys

import httpx
import psutil
import pytest

from common.membership import list_members
from common.transport import Keys
from tests.integration.helpers import spawn, stop_services, wait_for
from tests.integration.test_learner_service import write_task

TOKEN = "s3cret-token"


@pytest.fixture
def stack(redis_url, run_name, resilient, tmp_path, tiny_model_dir):
    common = [
        "--redis.url",
        redis_url,
        "--run.name",
        run_name,
        "--run.output_dir",
        str(tmp_path),
        "--model.path",
        str(tiny_model_dir),
        "--services.token",
        TOKEN,
    ]
    data = write_task(tmp_path / "train.jsonl")
    procs = [
        spawn("-m", "services.verifier", *common, "--verifier.workers", "1"),
        spawn(
            "-m",
            "services.generator",
            *common,
            "--generator.engine",
            "hf",
            "--generator.max_model_len",
            "256",
            "--generator.max_new_tokens",
            "8",
        ),
        spawn(
            "-m",
            "services.learner",
            *common,
            "--learner.train_file",
            str(data),
            "--learner.max_steps",
            "100000",
            "--learner.batch_prompts",
            "2",
            "--generator.max_new_tokens",
            "8",
            "--learner.checkpoint_every",
            "0",
        ),
    ]
    keys = Keys(run_name)
    members = {}
    for role in ("verifier", "generator", "learner"):
        members[role] = wait_for(lambda r=role: list_members(resilient, keys, r), 180, role)[0]
    yield members
    stop_services(*procs)


@pytest.mark.parametrize("role", ["verifier", "generator", "learner"])
def test_schemathesis_finds_no_server_error(stack, role):
    member = stack[role]
    base = f"http://127.0.0.1:{member['port']}"
    wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200, 120, "ready")
    exe = shutil.which("schemathesis", path=str(__import__("pathlib").Path(sys.executable).parent))
    proc = subprocess.run(
        [
            exe,
            "run",
            f"{base}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "40",
            "--phases",
            "examples,coverage,fuzzing",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_control_routes_need_the_token_and_services_bind_loopback(stack):
    for role, member in stack.items():
        assert member["host"] == "127.0.0.1"
        listening = [
            c
            for c in psutil.Process(member["pid"]).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == member["port"]
        ]
        assert [c.laddr.ip for c in listening] == ["127.0.0.1"], role
        base = f"http://127.0.0.1:{member['port']}"
        assert httpx.post(f"{base}/control/pause").status_code == 401
        wrong = {"Authorization": "Bearer " + TOKEN[:-1] + "x"}
        assert httpx.post(f"{base}/control/pause", headers=wrong).status_code == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.post(f"{base}/control/pause", headers=good).json()["paused"] is True
        assert httpx.post(f"{base}/control/resume", headers=good).json()["paused"] is False
        assert httpx.post(f"{base}/control/pause", content=b"x" * (2 << 20)).status_code == 413
