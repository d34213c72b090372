"""`luffy up` end to end: the real supervisor, real services, a real Prometheus scraping them.

The stack runs the tiny config with a few steps; a verifier is SIGKILLed mid-run to show the
supervisor restarting it; Prometheus (Debian's package, installed by .ci/run) scrapes the
services through the repo's deploy/prometheus config, and the Grafana dashboard may only
reference metric names the services actually export.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import httpx
import pytest

from common.config import RedisConfig
from common.membership import list_members
from common.net import free_port
from common.transport import Keys, Resilient, delete_run_keys
from tests.integration.helpers import REPO, spawn, spawn_up, wait_for

SUFFIXES = ("_bucket", "_sum", "_count", "_created", "_total")


def exported_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def dashboard_names() -> set[str]:
    dash = json.loads((REPO / "deploy/grafana/dashboards/luffy.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    return {m for e in exprs for m in re.findall(r"luffy_[a-z0-9_]+", e)}


def start_prometheus(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={REPO / 'deploy/prometheus/prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'prom'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("w"),
    )
    return proc, f"http://127.0.0.1:{port}"


def query(base: str, expr: str) -> list:
    try:
        body = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return []
    return body.get("data", {}).get("result", [])


@pytest.mark.slow
def test_luffy_up_runs_restarts_is_scraped_and_stops_cleanly(redis_url, tmp_path):
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed (.ci/run installs Debian's package)")
    run = f"up-{uuid.uuid4().hex[:8]}"
    out_dir = REPO / "runs"  # the repo's Prometheus config reads runs/prometheus-targets/
    data = Path(tempfile.mkdtemp())
    up = spawn_up(
        run,
        redis_url,
        out_dir,
        data,
        "--learner.max_steps",
        "1000",
        "--learner.eval_every",
        "3",
        "--learner.eval_prompts",
        "8",
        "--learner.batch_prompts",
        "4",
        "--learner.checkpoint_every",
        "0",
        "--generator.max_new_tokens",
        "24",
    )
    prom = None
    resilient = Resilient.from_config(RedisConfig(url=redis_url))
    keys = Keys(run)
    try:
        learners = wait_for(lambda: list_members(resilient, keys, "learner"), 300, "the learner")
        base = f"http://127.0.0.1:{learners[0]['port']}"
        wait_for(lambda: httpx.get(f"{base}/status").json().get("step", 0) >= 2, 300, "2 steps")

        verifier = next(m for m in list_members(resilient, keys, "verifier"))
        os.kill(verifier["pid"], signal.SIGKILL)  # the supervisor must bring it back
        wait_for(
            lambda: [
                m for m in list_members(resilient, keys, "verifier") if m["pid"] != verifier["pid"]
            ],
            120,
            "a restarted verifier",
        )

        prom, prom_url = start_prometheus(tmp_path)
        for metric in (
            "luffy_learner_steps_total",
            "luffy_generator_tokens_generated_total",
            "luffy_verifier_scored_total",
        ):
            wait_for(lambda m=metric: query(prom_url, f'{m}{{run="{run}"}}'), 120, f"{metric}")
        roles = {r["metric"]["role"] for r in query(prom_url, f'up{{run="{run}"}}')}
        assert roles == {"learner", "generator", "verifier"}

        exported = set()
        for role in ("learner", "generator", "verifier"):
            for member in list_members(resilient, keys, role):
                text = httpx.get(f"http://127.0.0.1:{member['port']}/metrics").text
                exported |= {family(n) for n in exported_names(text)}
        missing = {n for n in dashboard_names() if family(n) not in exported}
        assert missing == set(), f"dashboard uses metrics nobody exports: {missing}"

        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "services",
                "status",
                "--run.name",
                run,
                "--redis.url",
                redis_url,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert status.returncode == 0, status.stderr
        assert f"run {run}" in status.stdout and "deadletter entries" in status.stdout
        for needle in ("learner", "generator", "verifier", "step ", "tok/s", "scored ", "prompts"):
            assert needle in status.stdout, (needle, status.stdout)
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(30)
        up.send_signal(signal.SIGINT)  # Ctrl-C
        output = up.output(timeout=300)
    assert up.returncode == 0, output[-4000:]
    assert "verifier-0 exited with -9; restart 1" in output
    run_dir = out_dir / run
    try:
        checkpoints = sorted((run_dir / "checkpoints").glob("step_*"))
        assert checkpoints and (checkpoints[-1] / "meta.json").exists()  # resumable
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert any(r["kind"] == "train" for r in rows) and any(r["kind"] == "eval" for r in rows)
        assert (run_dir / "plot.png").stat().st_size > 10_000
        assert not (out_dir / "prometheus-targets" / f"{run}.json").exists()
        assert list_members(resilient, keys, "generator") == []  # everything stopped
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
        delete_run_keys(resilient.client, keys)


def test_luffy_up_with_an_unreachable_loopback_redis_embeds_one(tmp_path, tiny_model_dir):
    url = f"redis://127.0.0.1:{free_port()}/0"
    data = tmp_path / "task"
    proc = spawn(
        "-m",
        "services",
        "up",
        "--config",
        "configs/tiny-cpu.toml",
        "--redis.url",
        url,
        "--run.output_dir",
        str(tmp_path),
        "--model.path",
        str(tiny_model_dir),
        "--learner.train_file",
        str(data / "train.jsonl"),
        "--learner.eval_every",
        "0",
        "--learner.max_steps",
        "1",
        "--learner.batch_prompts",
        "2",
        "--generator.engine",
        "hf",
        "--generator.max_new_tokens",
        "8",
    )
    out = proc.output(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    match = re.search(r"embedded redis \(pid (\d+)\) at (\S+), data in (\S+)", out)
    assert match, out[-3000:]
    assert match[2] != url and match[3] == str(tmp_path / "tiny" / "redis")
    assert "embedded redis stopped" in out and "training finished" in out
    with pytest.raises(ProcessLookupError):
        os.kill(int(match[1]), 0)
    assert (data / "train.jsonl").exists()  # luffy init wrote the synthetic task


def test_luffy_up_continues_a_checkpointed_run_and_refuses_a_stale_one(redis_url, tmp_path):
    from common.config import load_config
    from services.supervisor import Supervisor, continue_or_refuse

    run = f"up-{uuid.uuid4().hex[:8]}"
    cfg = load_config(
        overrides=["--run.name", run, "--run.output_dir", str(tmp_path), "--redis.url", redis_url],
        environ={},
    )
    supervisor = Supervisor(cfg, "configs/tiny-cpu.toml", [], redis_url)
    learner = next(c for c in supervisor.children if c.role == "learner")
    resilient = Resilient.from_config(RedisConfig(url=redis_url))
    try:
        assert continue_or_refuse(cfg, redis_url, supervisor) is None  # a new run
        assert "LUFFY_LEARNER__RESUME" not in learner.env
        resilient.client.set(Keys(run).policy_version, 7)
        refusal = continue_or_refuse(cfg, redis_url, supervisor)
        assert refusal and f"run {run!r} has no checkpoint" in refusal
        assert "policy version 7" in refusal and "--run.name" in refusal
        (tmp_path / run / "checkpoints" / "step_00000003").mkdir(parents=True)
        (tmp_path / run / "checkpoints" / "step_00000003" / "meta.json").write_text("{}")
        assert continue_or_refuse(cfg, redis_url, supervisor) is None
        assert learner.env["LUFFY_LEARNER__RESUME"] == "true"
    finally:
        delete_run_keys(resilient.client, Keys(run))
