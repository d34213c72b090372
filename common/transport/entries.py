"""The entry format shared by publisher and consumer: ``{k: id, d: payload}``."""

from __future__ import annotations

MAX_KEY = 256
# Above this mean payload size, copying entries through Lua costs more than parsing nested
# replies: publish and read switch to plain pipelined XADD / XREADGROUP (measured crossover).
FLAT_MAX_BYTES = 4096

# (entry id, key or None, payload or None, times delivered)
Entry = tuple[str, "bytes | None", "bytes | None", int]


def nested_entries(rows: list) -> list[Entry]:
    """Nested XREADGROUP/XAUTOCLAIM rows -> flat entries (deleted entries have no fields)."""
    out: list[Entry] = []
    for eid, fields in rows:
        if fields is not None:
            out.append((eid.decode(), fields.get(b"k"), fields.get(b"d"), 1))
    return out


def valid_key(key: bytes) -> bool:
    """Ids travel newline-joined inside the commit script's arguments."""
    return 0 < len(key) <= MAX_KEY and b"\n" not in key


__all__ = ["FLAT_MAX_BYTES", "MAX_KEY", "Entry", "nested_entries", "valid_key"]
