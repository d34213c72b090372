"""Sockets and addresses on this host: a free port to hand to another process, a bound
listening socket whose (possibly picked) port is known before a server starts on it, and the
address other machines reach this one at (never a loopback or wildcard address when the
service is meant to be reached from elsewhere)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

WILDCARDS = ("0.0.0.0", "::", "")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (a child process binds it later; it may race, rarely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before starting a server so port 0 resolves to a real port we can publish."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    """``127.0.0.0/8``, ``::1`` or ``localhost``: reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: resolve it
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def route_address(host: str, port: int = 9) -> str:
    """This machine's own address on its route to ``host`` (the source address its packets to
    ``host`` carry). A UDP "connect" picks the route without sending anything."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        return sock.getsockname()[0]


def redis_host(url: str) -> tuple[str, int]:
    """Host and port of a ``redis://`` URL (6379 when none is given)."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    netloc = f"{user}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def advertised_host(bind: str, advertise: str | None, redis_url: str) -> str:
    """The address peers should use: ``advertise`` when set, else ``bind`` unless it is a
    wildcard, else this machine's address on its route to Redis (whoever reaches Redis can
    usually reach that one)."""
    if advertise:
        return advertise
    if bind not in WILDCARDS:
        return bind
    try:
        return route_address(*redis_host(redis_url))
    except OSError:  # no route to Redis (yet): the name others may resolve
        return socket.gethostname()


__all__ = [
    "WILDCARDS",
    "advertised_host",
    "bind_socket",
    "free_port",
    "is_loopback",
    "redact_url",
    "redis_host",
    "route_address",
]
