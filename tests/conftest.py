"""Shared fixtures: a real Redis (the machine's, or an embedded one when none answers), a
unique run name per test whose keys are deleted afterwards, and the tiny model built once."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import ClassVar

import pytest
import redis

from common.config import RedisConfig, TinyModelConfig
from common.embedded_redis import EmbeddedRedis, redis_reachable
from common.transport import Keys, Resilient, delete_run_keys

REPO = Path(__file__).resolve().parents[1]
# Popped, not read: children inherit os.environ and the config loader rejects unknown LUFFY_*.
TEST_REDIS_URL = os.environ.pop("LUFFY_TEST_REDIS_URL", None) or "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    url = TEST_REDIS_URL
    if redis_reachable(url):
        yield url
        return
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def run_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_cfg(redis_url: str) -> RedisConfig:
    return RedisConfig(url=redis_url, block_ms=50, claim_idle_ms=300)


@pytest.fixture
def rclient(redis_url: str, run_name: str):
    client = redis.Redis.from_url(redis_url)
    yield client
    delete_run_keys(client, Keys(run_name))
    client.close()


@pytest.fixture
def resilient(redis_cfg: RedisConfig, rclient) -> Resilient:
    return Resilient.from_config(redis_cfg)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from services.demo.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), TinyModelConfig(), seed=0)


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same shape and tokenizer corpus as ``tiny_model_dir``, other weights (seed 1)."""
    from services.demo.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model-b"), TinyModelConfig(), seed=1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests run only where CUDA is available."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class FaultReport:
    """Counts of the fault-injection tests (injected, survived, lost, duplicated, timings),
    written as fault_report.json in pytest's base temp folder and printed at the end."""

    rows: ClassVar[list[dict]] = []  # one report per test session

    def add(self, fault: str, **counts: object) -> None:
        self.rows.append({"fault": fault, **counts})


@pytest.fixture(scope="session")
def faults() -> FaultReport:
    return FaultReport()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not FaultReport.rows:
        return
    path = Path(config._tmp_path_factory.getbasetemp()) / "fault_report.json"
    path.write_text(json.dumps(FaultReport.rows, indent=2))
    terminalreporter.section("fault report")
    for row in FaultReport.rows:
        terminalreporter.write_line(json.dumps(row))
    terminalreporter.write_line(f"written to {path}")
