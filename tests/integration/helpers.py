"""Process helpers for integration tests: start children, wait for what they print."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from services.supervisor import up_args

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


class Child(subprocess.Popen):
    """A child whose combined output is drained by a thread as it comes, so a chatty child
    never blocks on a full pipe while the test is busy elsewhere."""

    def __init__(self, args: list[str], env: dict[str, str], session: bool = False):
        super().__init__(
            args,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=session,  # its own process group: killpg ends the whole tree
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        for line in self.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def next_line(self, index: int, deadline: float) -> str | None:
        """Line number ``index`` once printed; None at end of output or past the deadline."""
        with self._cond:
            while len(self.lines) <= index and not getattr(self, "_eof", False):
                if not self._cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                    return None
            return self.lines[index] if index < len(self.lines) else None

    def output(self, timeout: float = 600) -> str:
        """Everything the child printed, after waiting for it to exit."""
        self.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return "".join(self.lines)


def spawn(*args: str, env: dict[str, str] | None = None, session: bool = False) -> Child:
    """A child python process in the repo root, its output drained into ``child.lines``
    (``session``: in a process group of its own, as a separate machine's process tree)."""
    return Child(
        [sys.executable, *args],
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        session=session,
    )


def spawn_up(run: str, redis_url: str, out_dir: Path, data_dir: Path, *overrides: str) -> Child:
    """`luffy up` on the tiny config for ``run``: its folder under ``out_dir``, the tiny model
    and task built under ``data_dir``; ``overrides`` are more dotted flags."""
    return spawn(
        *up_args("configs/tiny-cpu.toml", run, out_dir),
        "--redis.url",
        redis_url,
        "--model.path",
        str(data_dir / "model"),
        "--learner.train_file",
        str(data_dir / "task" / "train.jsonl"),
        "--learner.eval_file",
        str(data_dir / "task" / "eval.jsonl"),
        *overrides,
    )


def stop_services(*procs: subprocess.Popen, timeout: float = 120) -> None:
    """SIGTERM the learners first and wait for them (a learner in the middle of a weight push
    needs its generators alive to finish it, which is why `luffy up` stops it first), then the
    rest."""
    learners = [p for p in procs if "services.learner" in p.args]
    for group in (learners, [p for p in procs if p not in learners]):
        for p in group:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in group:
            p.wait(timeout)


def wait_line(proc: Child, prefix: str, timeout_s: float = 60) -> str:
    """Wait until the child prints a line starting with ``prefix`` (the child's own signal)."""
    deadline = time.monotonic() + timeout_s
    index = 0
    while (line := proc.next_line(index, deadline)) is not None:
        if line.startswith(prefix):
            return line.strip()
        index += 1
    raise AssertionError(f"child never printed {prefix!r}; output:\n{''.join(proc.lines)[-4000:]}")


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
