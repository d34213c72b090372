"""Process helpers for integration tests: start children, wait for what they print."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A child python process in the repo root, stdout piped (text)."""
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def wait_line(proc: subprocess.Popen, prefix: str, timeout_s: float = 60) -> str:
    """Read the child's output until a line starts with ``prefix`` (the child's own signal)."""
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"child never printed {prefix!r}; output:\n{''.join(seen)[-4000:]}")


def wait_for(check: Callable[[], T], timeout_s: float = 30, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy (for states only observable by polling,
    such as a TTL expiring or an idle timeout elapsing)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)
