"""``luffy up``: the whole stack on one machine under one supervisor.

Parts and ownership:
- Redis: the configured one, or an embedded redis-server when a loopback URL does not answer;
  then ``luffy init`` (the tiny model and the synthetic task when they are missing) runs as a
  child, exactly as compose's ``init`` service does.
- ``Supervisor`` owns the child processes (``Child``): one learner, ``generator.replicas``
  generators, ``verifier.replicas`` verifiers, each started with exactly the command
  docker-compose.yml uses (``services.stack``), its own log file in ``<run>/logs``, and in a
  session of its own so Ctrl-C reaches only the supervisor. A child that exits unexpectedly
  is restarted with exponential back-off and reported. When the learner finishes
  (``max_steps``) or on Ctrl-C/SIGTERM, the learner is stopped first (it writes a checkpoint),
  then the rest.
- ``Dashboard``: live progress (rich) from Redis and the services' /status; the plot of
  ``metrics.jsonl`` is redrawn every minute and at the end.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.config import Config, write_resolved
from common.embedded_redis import RedisUnavailable, ensure_redis
from common.logs import setup_logging
from common.net import redact_url
from common.shell import EXIT_BAD_SETUP
from services.stack import overrides_as_env, service_command

log = logging.getLogger("luffy.up")
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0
STOP_GRACE_S = 90.0


def run_init(config_path: str, env: dict[str, str], log_path: Path) -> int:
    """``luffy init`` as a child (the command compose's init service runs), waited for."""
    cmd = luffy_executable() + service_command("init", config_path)[1:]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.call(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def luffy_executable() -> list[str]:
    """The ``luffy`` script of this interpreter's environment (as compose runs it)."""
    script = Path(sys.executable).with_name("luffy")
    return [str(script)] if script.exists() else [sys.executable, "-m", "services"]


@dataclass
class Child:
    name: str
    role: str
    cmd: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    restarts: int = 0
    quick_failures: int = 0  # consecutive deaths soon after a start: drives the back-off
    started_at: float = 0.0
    next_start: float = 0.0
    exits: list[int] = field(default_factory=list)

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        log.info("started %s (pid %d): %s", self.name, self.proc.pid, " ".join(self.cmd))

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    def __init__(self, cfg: Config, config_path: str, overrides: list[str], redis_url: str):
        self.cfg = cfg
        env = {
            **os.environ,
            **overrides_as_env(overrides),
            "LUFFY_REDIS__URL": redis_url,
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("LUFFY_CONFIG", None)
        self.env = env
        logs = cfg.run.run_dir / "logs"
        exe = luffy_executable()
        counts = {
            "verifier": cfg.verifier.replicas,
            "generator": cfg.generator.replicas,
            "learner": 1,
        }
        self.children = []
        for role, count in counts.items():
            for i in range(count):
                name = role if role == "learner" else f"{role}-{i}"
                cmd = exe + service_command(role, config_path)[1:]
                self.children.append(Child(name, role, cmd, env, logs / f"{name}.log"))
        self.finished = False
        self.fatal = ""  # a child that cannot start: why (the stack stops)
        self.events: list[str] = []

    def start(self) -> None:
        for child in self.children:
            child.start()

    def poll(self) -> None:
        """Restart children that died (with back-off); notice the learner finishing."""
        now = time.monotonic()
        for child in self.children:
            if child.proc is None:
                if now >= child.next_start:
                    child.start()
                continue
            code = child.proc.poll()
            if code is None:
                continue
            child.exits.append(code)
            child.proc = None
            if child.role == "learner" and code == 0:
                self.finished = True
                self._event("learner finished (exit 0)")
                continue
            if code == EXIT_BAD_SETUP:  # restarting would only fail the same way
                self.fatal = f"{child.name}: {_reason(child.log_path)}"
                self._event(f"{self.fatal} (exit {code}; log: {child.log_path})")
                continue
            # back off exponentially while a child keeps dying young; a child that ran for a
            # while before dying is restarted at once
            lived = now - child.started_at
            child.quick_failures = 0 if lived > STABLE_AFTER_S else child.quick_failures + 1
            delay = (
                0.0 if child.quick_failures == 0 else min(BACKOFF_MAX_S, 2.0**child.quick_failures)
            )
            child.restarts += 1
            if child.role == "learner":  # a restarted learner continues from its checkpoint
                child.env = {**child.env, "LUFFY_LEARNER__RESUME": "true"}
            child.next_start = now + delay
            self._event(
                f"{child.name} exited with {code}; restart {child.restarts} in {delay:.0f}s "
                f"(log: {child.log_path})"
            )

    def _event(self, text: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {text}")
        log.warning("%s", text)

    def stop(self) -> None:
        """Learner first (it checkpoints on SIGTERM), then generators and verifiers."""
        for roles in (("learner",), ("generator", "verifier")):
            group = [c for c in self.children if c.role in roles and c.running()]
            for child in group:
                child.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            for child in group:
                try:
                    child.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in %.0fs; killing it", child.name, STOP_GRACE_S)
                    child.proc.kill()
                    child.proc.wait()


def run_up(cfg: Config, config_path: str | None = None, overrides: list[str] = ()) -> int:
    setup_logging(cfg.run.log_level, "up")
    run_dir = cfg.run.run_dir
    log.info("run folder %s (config %s)", run_dir, write_resolved(cfg, run_dir, "up"))
    config_file = _config_for_children(cfg, config_path, run_dir)
    try:
        url, server = ensure_redis(cfg.redis, run_dir)
    except RedisUnavailable as exc:
        log.error("%s", exc)
        return 2
    log.info("redis at %s%s", redact_url(url), " (embedded)" if server else "")
    supervisor = Supervisor(cfg, config_file, list(overrides), url)
    refusal = continue_or_refuse(cfg, url, supervisor)
    if refusal:
        log.error("%s", refusal)
        if server:
            server.stop()
        return 2
    log.info("preparing the model and data (luffy init)")
    init_log = run_dir / "logs" / "init.log"
    if run_init(config_file, supervisor.env, init_log) != 0:
        last = init_log.read_text().strip().splitlines()[-1:] if init_log.is_file() else []
        log.error("luffy init failed: %s (see %s)", "".join(last) or "no output", init_log)
        if server:
            server.stop()
        return 2
    stopping = {"signal": None}

    def on_signal(signum: int, _frame: object) -> None:
        stopping["signal"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        supervisor.start()
        from services.dashboard import Dashboard

        with Dashboard(cfg, url, supervisor) as dashboard:
            while not (supervisor.finished or supervisor.fatal) and stopping["signal"] is None:
                supervisor.poll()
                dashboard.refresh()
                time.sleep(0.5)  # the supervisor's own tick: children are watched by polling
        reason = "training finished" if supervisor.finished else "stopping on signal"
        log.info("%s; stopping the stack", supervisor.fatal or reason)
        supervisor.stop()
        dashboard.final()
        if supervisor.fatal:
            log.error("%s", supervisor.fatal)
            return EXIT_BAD_SETUP
        return 0
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if server:
            server.stop()
            log.info("embedded redis stopped")


def _reason(log_path: Path) -> str:
    """The line a child that refused to start gave for it (the end of its log)."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return "(no log)"
    for line in reversed(lines):
        for marker in ("cannot start:", "stops:"):
            if marker in line:
                return f"{marker.rstrip(':')}: {line.split(marker, 1)[1].strip()}"
        if line.startswith("config error:"):
            return line
    return next((line for line in reversed(lines) if line.strip()), "(empty log)")


def up_args(config: str, run: str, out_dir: str | Path, *overrides: str) -> list[str]:
    """The arguments after the python interpreter that start `luffy up` on ``config`` for run
    ``run`` with its folder under ``out_dir`` (``overrides``: more dotted flags); tests and
    benchmarks start whole stacks this way."""
    return [
        "-m",
        "services",
        "up",
        "--config",
        config,
        "--run.name",
        run,
        "--run.output_dir",
        str(out_dir),
        *overrides,
    ]


def continue_or_refuse(cfg: Config, url: str, supervisor: Supervisor) -> str | None:
    """A run folder with checkpoints is continued (the learner starts with resume); a run
    name whose state is in Redis without any checkpoint cannot be continued: refuse, naming
    it, rather than start a learner that would stall on ids already marked done."""
    from common.transport import Keys, Resilient, stale_run_refusal

    checkpoint_dir = cfg.run.run_dir / "checkpoints"
    checkpoints = sorted(checkpoint_dir.glob("step_*/meta.json"))
    if checkpoints:
        log.info("continuing run %r from %s", cfg.run.name, checkpoints[-1].parent)
        for child in supervisor.children:
            if child.role == "learner":
                child.env = {**child.env, "LUFFY_LEARNER__RESUME": "true"}
        return None
    redis_ = Resilient.from_config(cfg.redis.model_copy(update={"url": url}))
    return stale_run_refusal(redis_, Keys(cfg.run.name), checkpoint_dir, f" at {redact_url(url)}")


def _config_for_children(cfg: Config, config_path: str | None, run_dir: Path) -> str:
    """The TOML children read: the given file, or (with none) the resolved defaults."""
    if config_path:
        return str(Path(config_path).resolve())
    import tomli_w

    path = run_dir / "config.toml"
    path.write_text(tomli_w.dumps(cfg.to_toml_dict()))
    return str(path)
