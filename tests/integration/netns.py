"""Test hosts on this machine: Linux network namespaces, each plugged by a veth pair into one
bridge of this machine's, so services in them reach Redis, the learner and each other (gloo
connects every pair of ranks) over real addresses, as pods on one network would, and a host's
link can be cut and restored.

Addresses: the bridge, where the servers (Redis, the learner) listen, is ``server``
(``10.<net>.0.1``); host ``i`` (1-based) is ``10.<net>.0.<10 + i>``. Cutting host ``i``'s link
(its veth end on the bridge going down) leaves everyone else connected.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.helpers import Child


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def netns_available() -> str:
    """'' when namespaces can be made here, else why not."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"lfy-probe-{uuid.uuid4().hex[:6]}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"ip netns add failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


@dataclass
class NetHosts:
    count: int
    net: int = 201
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:4])
    made: list[str] = field(default_factory=list)  # namespaces and links to remove

    @property
    def server(self) -> str:
        return f"10.{self.net}.0.1"

    @property
    def bridge(self) -> str:
        return f"lfy{self.tag}br"

    def address(self, i: int) -> str:
        return f"10.{self.net}.0.{10 + i}"

    def namespace(self, i: int) -> str:
        return f"lfy{self.tag}h{i}"

    def link(self, i: int) -> str:
        return f"lfy{self.tag}{i}a"  # this machine's end (15 characters at most)

    def __enter__(self) -> NetHosts:
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            self.made.append(f"link:{self.bridge}")
            ip("addr", "add", f"{self.server}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for i in range(1, self.count + 1):
                self._add_host(i)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _add_host(self, i: int) -> None:
        ns, here, there = self.namespace(i), self.link(i), f"lfy{self.tag}{i}b"
        ip("netns", "add", ns)
        self.made.append(f"netns:{ns}")
        ip("link", "add", here, "type", "veth", "peer", "name", there)
        self.made.append(f"link:{here}")
        ip("link", "set", there, "netns", ns)
        ip("link", "set", here, "master", self.bridge)
        ip("link", "set", here, "up")
        ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", there)
        ip("-n", ns, "link", "set", there, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "route", "add", "default", "via", self.server)
        # `ip netns exec` mounts /etc/netns/<ns>/* over /etc: a resolver on the namespace's own
        # loopback refuses at once. This machine's resolver is not routed from the namespace,
        # and torch's c10d looks up peers' names, which would hang each connect for 10 s.
        etc = Path("/etc/netns") / ns
        etc.mkdir(parents=True, exist_ok=True)
        self.made.append(f"etc:{etc}")
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")

    def cut(self, i: int) -> None:
        """Pull host ``i``'s cable: nothing gets through, no connection is reset."""
        ip("link", "set", self.link(i), "down")

    def restore(self, i: int) -> None:
        ip("link", "set", self.link(i), "up")

    def spawn(self, i: int, *args: str, env: dict[str, str] | None = None) -> Child:
        """A python child in host ``i``'s namespace (``ip netns exec`` execs it: same pid)."""
        import os

        return Child(
            ["ip", "netns", "exec", self.namespace(i), sys.executable, *args],
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )

    def __exit__(self, *exc: object) -> None:
        for item in reversed(self.made):
            kind, name = item.split(":", 1)
            if kind == "etc":
                shutil.rmtree(name, ignore_errors=True)
                continue
            cmd = ["ip", "link", "del", name] if kind == "link" else ["ip", "netns", "del", name]
            subprocess.run(cmd, capture_output=True)  # a peer end goes with its namespace
        self.made.clear()


__all__ = ["NetHosts", "netns_available"]
