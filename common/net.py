"""Sockets on this host: a free port to hand to another process, or a bound listening socket
whose (possibly picked) port is known before a server starts on it."""

from __future__ import annotations

import socket


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


__all__ = ["bind_socket", "free_port"]
