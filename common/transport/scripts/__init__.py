"""The Lua scripts the stream transport runs inside Redis, one ``.lua`` file each, read once at
import. Each file's header says its KEYS, ARGV and reply."""

from __future__ import annotations

from importlib import resources


def source(name: str) -> str:
    """The text of ``<name>.lua`` beside this module."""
    return resources.files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


XADD_MANY = source("xadd_many")
COMMIT = source("commit")
READ_FLAT = source("read_flat")
SAFE_TRIM = source("safe_trim")

__all__ = ["COMMIT", "READ_FLAT", "SAFE_TRIM", "XADD_MANY", "source"]
