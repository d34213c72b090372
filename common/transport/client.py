"""The Redis client every service holds: ``Resilient`` retries a call forever with capped,
jittered exponential back-off while Redis is away and reports ``connected`` (for /readyz);
``Stopped`` gets a waiting caller out when its service stops."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from common.config import RedisConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


class Stopped(RuntimeError):
    """Raised out of a retry loop when the owning service is stopping."""


def connect(cfg: RedisConfig, url: str | None = None) -> redis.Redis:
    """A client whose socket timeout always outlasts a blocking read."""
    timeout = cfg.socket_timeout_s + cfg.block_ms / 1000.0
    return redis.Redis.from_url(
        url or cfg.url,
        password=cfg.password.get_secret_value() if cfg.password else None,
        socket_timeout=timeout,
        socket_connect_timeout=min(5.0, timeout),
        health_check_interval=30,
    )


class Resilient:
    """Retries a Redis call forever on connection loss, backing off up to ``max_s``."""

    def __init__(
        self,
        client: redis.Redis,
        initial_s: float = 0.1,
        max_s: float = 5.0,
        stop: threading.Event | None = None,
    ):
        self.client = client
        self.initial_s = initial_s
        self.max_s = max_s
        self.stop = stop or threading.Event()
        self.connected = True
        self.outages = 0
        self.last_error = ""
        self.auth_refused = False  # the last ping failed on credentials

    @classmethod
    def from_config(cls, cfg: RedisConfig, stop: threading.Event | None = None) -> Resilient:
        return cls(connect(cfg), cfg.reconnect_initial_s, cfg.reconnect_max_s, stop)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        delay = self.initial_s
        while True:
            try:
                result = fn(*args, **kwargs)
            except TRANSIENT_ERRORS as exc:
                if self.connected:
                    self.outages += 1
                    log.warning("redis unavailable (%s); retrying with back-off", exc)
                self.connected = False
                self.last_error = str(exc)
                # jitter keeps many services from reconnecting in lock-step
                if self.stop.wait(delay * (0.5 + random.random() / 2)):
                    raise Stopped("stopping while waiting for redis") from exc
                delay = min(delay * 2, self.max_s)
                continue
            if not self.connected:
                log.info("redis reachable again")
                self.connected = True
            return result

    def ping(self) -> bool:
        """One attempt, no retry: for readiness probes."""
        try:
            self.client.ping()
        except TRANSIENT_ERRORS as exc:
            self.connected, self.last_error = False, str(exc)
            # a password refused (or missing) is a setup mistake, not an outage
            self.auth_refused = isinstance(exc, redis.AuthenticationError) or "NOAUTH" in str(exc)
            return False
        self.connected = True
        return True


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create ``group`` on ``stream`` (and the stream) reading from the beginning."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


__all__ = ["TRANSIENT_ERRORS", "Resilient", "Stopped", "connect", "ensure_group"]
