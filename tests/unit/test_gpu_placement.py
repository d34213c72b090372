"""Where the GPU path puts things, checked without a GPU."""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from learner.train import rank_device
from services.compose import PlacementError, check_placement, gpu_ids, gpu_stack, parse_gpus


def test_each_nccl_rank_trains_on_its_own_gpu():
    assert str(rank_device("nccl", {"LOCAL_RANK": "3"})) == "cuda:3"
    assert str(rank_device("nccl", {})) == "cuda:0"
    assert str(rank_device("gloo", {"LOCAL_RANK": "3"})) == "cpu"


REPO = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def compose_errors(compose):
    schema = json.loads((REPO / "tests/data/compose-spec.json").read_text())
    return [
        f"{list(e.path)}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(compose)
    ]


def test_the_default_gpu_profile_gives_each_service_its_own_gpus():
    assert check_placement(BASE, gpus=8) == []
    assert gpu_ids(BASE["services"]["learner"]) == [0, 1, 2, 3]
    assert gpu_ids(BASE["services"]["generator"]) == [4]


def test_a_generated_stack_places_every_replica_on_gpus_of_its_own():
    stack = gpu_stack(BASE, parse_gpus("0-3"), generators=4, gpus=8)
    assert compose_errors(stack) == [] and check_placement(stack, gpus=8) == []
    generators = {n: gpu_ids(s) for n, s in stack["services"].items() if n.startswith("gen")}
    assert generators == {f"generator-{k}": [4 + k] for k in range(4)}
    env = stack["services"]["learner"]["environment"]
    assert env["LUFFY_LEARNER__NPROC"] == "4" and env["LUFFY_SYNC__HOST"] == "learner"
    assert stack["services"]["generator-2"]["environment"]["LUFFY_GENERATOR__ID"] == "generator-2"
    assert {"redis", "verifier", "prometheus", "grafana"} <= set(stack["services"])
    two_each = gpu_stack(BASE, [0, 1], generators=3, gpus=8, gpus_per_generator=2)
    assert [gpu_ids(two_each["services"][f"generator-{k}"]) for k in range(3)] == [
        [2, 3],
        [4, 5],
        [6, 7],
    ]


def test_layouts_that_cannot_run_are_refused_or_reported():
    with pytest.raises(PlacementError, match="do not fit on 8 GPUs"):
        gpu_stack(BASE, parse_gpus("0-3"), generators=5, gpus=8)
    with pytest.raises(PlacementError, match="twice"):
        parse_gpus("0-2,2")
    with pytest.raises(PlacementError, match="not N or N-M"):
        parse_gpus("a-b")
    shared = yaml.safe_load(yaml.safe_dump(BASE, sort_keys=False))
    shared["services"]["generator"]["deploy"]["resources"]["reservations"]["devices"][0][
        "device_ids"
    ] = ["3"]
    del shared["services"]["generator"]["ipc"]
    problems = check_placement(shared, gpus=4)
    assert "generator: GPU 3 is also learner's" in problems
    assert "generator: no ipc: host or shm_size (NCCL needs shared memory)" in problems
    assert check_placement(BASE, gpus=4) == ["generator: GPU 4 does not exist (4 GPUs)"]


def test_luffy_compose_writes_the_stack_and_refuses_a_bad_layout(tmp_path):
    out = tmp_path / "docker-compose.gpu.yml"
    cmd = [sys.executable, "-m", "services", "compose", "--out", str(out), "--generators", "2"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    written = yaml.safe_load(out.read_text())
    assert check_placement(written, gpus=8) == [] and "generator-1" in written["services"]
    bad = subprocess.run([*cmd, "--generators", "9"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "do not fit on 8 GPUs" in bad.stderr
