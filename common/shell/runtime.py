"""The process shell every service runs in.

Parts and ownership:
- ``Worker`` (protocol): the service's own logic. It owns its engine/model/state; the
  runtime calls ``setup`` once, then ``step`` repeatedly in the main thread (so libraries that
  need the main thread, e.g. signal-based timeouts, work), then ``close``.
- ``ServiceContext``: what the runtime hands the worker: resolved config, the resilient Redis
  connection, run keys, metrics registry, and the stop/pause events.
- ``ServiceRuntime``: owns the HTTP server (uvicorn in a daemon thread, same process), the
  membership heartbeat thread, signal handling (SIGTERM/SIGINT -> graceful stop) and the
  built-in ``pause``/``resume`` controls. It writes the resolved config to the run folder.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from common.config import Config, write_resolved
from common.membership import Heartbeat
from common.metrics import Metrics
from common.net import advertised_host, bind_socket, is_loopback, redact_url
from common.shell.app import create_app
from common.shell.preflight import FatalError, StartupError, wait_for_redis
from common.shell.profiling import profiled
from common.transport import Keys, Resilient, Stopped

log = logging.getLogger(__name__)


@dataclass
class ServiceContext:
    role: str
    member_id: str
    config: Config
    redis: Resilient
    keys: Keys
    metrics: Metrics
    stop: threading.Event = field(default_factory=threading.Event)
    paused: threading.Event = field(default_factory=threading.Event)


class Worker(Protocol):
    def setup(self, ctx: ServiceContext) -> None: ...
    def step(self) -> bool:
        """Do one unit of work; return False when idle (the runtime then yields briefly)."""
        ...

    def status(self) -> dict[str, Any]: ...
    def not_ready(self) -> list[str]: ...
    def controls(self) -> dict[str, Callable[[], dict[str, Any]]]: ...
    def member_info(self) -> dict[str, Any]:
        """Extra fields for the membership record (e.g. a generator's sync ranks)."""
        ...

    def routes(self, app: Any, ctx: ServiceContext) -> None:
        """Add service-specific endpoints (called before ``setup``; guard on readiness)."""
        ...

    def close(self) -> None: ...


def default_member_id(role: str) -> str:
    return f"{role[:3]}-{socket.gethostname()}-{os.getpid()}"


class ServiceRuntime:
    def __init__(self, role: str, config: Config, worker: Worker, member_id: str | None = None):
        self.role = role
        self.config = config
        self.worker = worker
        self.member_id = member_id or default_member_id(role)
        self.started = time.time()
        self.metrics = Metrics(role)
        stop = threading.Event()
        self.ctx = ServiceContext(
            role=role,
            member_id=self.member_id,
            config=config,
            redis=Resilient.from_config(config.redis, stop),
            keys=Keys(config.run.name),
            metrics=self.metrics,
            stop=stop,
        )
        self.port: int | None = None
        self._advertised = config.services.host  # the REST address others use (membership)
        self.steps = 0
        self._progress_at = time.monotonic()  # when the work loop last finished a step
        self._loop_error: str | None = None
        self._setup_done = False
        self._server: Any = None
        self._heartbeat: Heartbeat | None = None
        self.metrics.gauge_fn(
            "uptime_seconds", "Seconds since start", lambda: time.time() - self.started
        )
        self.metrics.gauge_fn(
            "redis_connected_ratio", "1 when Redis answers", lambda: float(self.ctx.redis.connected)
        )

    # ---------------------------------------------------------------- StatusSource

    def alive(self) -> bool:
        return self._loop_error is None

    def not_ready(self) -> list[str]:
        reasons = []
        if not self._setup_done:
            reasons.append("starting")
        if not self.ctx.redis.connected:
            reasons.append(f"redis unreachable: {self.ctx.redis.last_error}")
        if self.ctx.paused.is_set():
            reasons.append("paused")
        if self._loop_error:
            reasons.append(f"work loop failed: {self._loop_error}")
        if self._setup_done:
            reasons += self.worker.not_ready()
            idle = time.monotonic() - self._progress_at
            if idle > self.config.services.watchdog_s:
                reasons.append(
                    f"work loop has not advanced for {idle:.0f}s "
                    f"(services.watchdog_s = {self.config.services.watchdog_s:g})"
                )
        return reasons

    def status(self) -> dict[str, Any]:
        base = {
            "port": self.port,
            "pid": os.getpid(),
            "paused": self.ctx.paused.is_set(),
            "redis_connected": self.ctx.redis.connected,
            "steps": self.steps,
            "loop_idle_s": round(time.monotonic() - self._progress_at, 1),
        }
        if self._setup_done:
            base.update(self.worker.status())
        return base

    def controls(self) -> dict[str, Callable[[], dict[str, Any]]]:
        actions = {"pause": self._pause, "resume": self._resume}
        if self._setup_done:
            actions.update(self.worker.controls())
        return actions

    def _pause(self) -> dict[str, Any]:
        self.ctx.paused.set()
        return {"paused": True}

    def _resume(self) -> dict[str, Any]:
        self.ctx.paused.clear()
        return {"paused": False}

    # ---------------------------------------------------------------- lifecycle

    def _start_http(self) -> None:
        import uvicorn

        svc = self.config.services
        if svc.token is None and not is_loopback(svc.host):
            raise StartupError(
                f"services.host {svc.host!r} is reachable from other machines and no "
                "services.token is set, so anyone there could pause or checkpoint this "
                "service: set LUFFY_SERVICES__TOKEN (luffy secrets writes one for compose) or "
                "bind 127.0.0.1"
            )
        try:
            sock = bind_socket(svc.host, svc.port)
        except OSError as exc:
            raise StartupError(
                f"services.port {svc.port} on {svc.host} cannot be bound ({exc.strerror}): "
                "another process has it; pick another port or 0 for a free one"
            ) from None
        self.port = sock.getsockname()[1]
        self._advertised = advertised_host(svc.host, svc.advertise_host, self.config.redis.url)
        token = svc.token.get_secret_value() if svc.token else None
        app = create_app(
            self, self.metrics, token, svc.max_body_bytes, lambda a: self.worker.routes(a, self.ctx)
        )
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="http", daemon=True
        )
        thread.start()
        log.info("%s %s serving http://%s:%d", self.role, self.member_id, svc.host, self.port)

    def _membership_info(self) -> dict[str, Any]:
        return {
            "host": self._advertised,
            "port": self.port,
            "pid": os.getpid(),
            "started": self.started,
            **self._readiness(),
            **(self.worker.member_info() if self._setup_done else {}),
        }

    def _readiness(self) -> dict[str, Any]:
        reasons = self.not_ready()
        return {"ready": not reasons, "not_ready": [r[:200] for r in reasons[:3]]}

    def _install_signals(self) -> None:
        def handle(signum: int, _frame: Any) -> None:
            log.info("received %s; stopping", signal.Signals(signum).name)
            self.ctx.stop.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handle)
            signal.signal(signal.SIGINT, handle)

    def run(self) -> int:
        """Serve until stopped; returns the process exit code."""
        cfg = self.config
        path = write_resolved(cfg, cfg.run.run_dir, self.role)
        log.info("resolved config written to %s", path)
        self._install_signals()
        rc = 0
        try:
            self._start_http()
            wait_for_redis(self.ctx.redis, redact_url(cfg.redis.url), cfg.redis.start_timeout_s)
            self.worker.setup(self.ctx)
            self._setup_done = True
            self._progress_at = time.monotonic()
            self._heartbeat = Heartbeat(
                self.ctx.redis,
                self.ctx.keys,
                self.role,
                self.member_id,
                self._membership_info,
                cfg.redis.heartbeat_interval_s,
                cfg.redis.heartbeat_ttl_s,
            ).start()
            with profiled(cfg.run.profile_dir, f"{self.role}-{self.member_id}"):
                self._loop()
        except Stopped:
            pass
        except FatalError as exc:  # an expected end: one line, no traceback
            self._loop_error = str(exc)
            what = "cannot start" if isinstance(exc, StartupError) else "stops"
            log.error("%s %s: %s", self.role, what, exc)
            rc = exc.exit_code
        except Exception as exc:
            self._loop_error = f"{type(exc).__name__}: {exc}"
            log.exception("%s work loop failed", self.role)
            rc = 1
        finally:
            self._shutdown()
        return rc

    def _loop(self) -> None:
        stop, paused = self.ctx.stop, self.ctx.paused
        while not stop.is_set():
            if paused.is_set():  # paused on purpose: not a stall
                self._progress_at = time.monotonic()
                stop.wait(0.05)
                continue
            busy = self.worker.step()
            self.steps += 1
            self._progress_at = time.monotonic()
            if not busy:
                stop.wait(0.005)

    def _shutdown(self) -> None:
        self.ctx.stop.set()
        try:
            if self._setup_done:
                self.worker.close()
        except Exception:
            log.exception("error while closing %s", self.role)
        if self._heartbeat:
            self._heartbeat.stop()
        if self._server is not None:
            self._server.should_exit = True


__all__ = ["ServiceContext", "ServiceRuntime", "Worker", "default_member_id"]
