"""Reading back what the experiment trackers wrote: TensorBoard's event files (through
tensorboard's own EventAccumulator) and an offline W&B run, whose only record of the logged rows
is its transaction log ``run-<id>.wandb``: a LevelDB-style log (a 7-byte W&B header, then
32 KiB blocks counted from the file's start, chunks of crc32c, little-endian length and type)
of ``wandb_internal`` protobuf records."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
CHUNK_HEADER = 7  # crc (4), length (2), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_env(folder: Path) -> dict[str, str]:
    """An offline W&B that keeps its caches and settings under ``folder``."""
    return {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CACHE_DIR": str(folder / "cache"),
        "WANDB_CONFIG_DIR": str(folder / "config"),
        "WANDB_DATA_DIR": str(folder / "data"),
    }


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in ``log_dir``: tag -> [(step, value)] in the order written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def _records(data: bytes) -> list[bytes]:
    pos, pending, out = CHUNK_HEADER, b"", []
    while pos + CHUNK_HEADER <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER:  # a block's tail too short for a header: padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        pending += data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind in (FULL, LAST):
            out.append(pending)
            pending = b""
        elif kind not in (FIRST, MIDDLE):
            raise ValueError(f"chunk type {kind} at byte {pos}: not a W&B transaction log")
    return out


def _finished_log(path: Path, timeout_s: float) -> list[Any]:
    """The records of a finished run's log. W&B's service writes the log in the background and
    may still be flushing it when ``finish()`` returns: wait for the run's exit record."""
    from wandb.proto import wandb_internal_pb2

    deadline = time.monotonic() + timeout_s
    while True:
        data = path.read_bytes()
        assert data[:4] == b":W&B", path
        records = []
        for raw in _records(data):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            records.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout_s} s"
        time.sleep(0.2)


def wandb_offline_run(folder: Path, timeout_s: float = 30) -> tuple[dict[str, Any], list[dict]]:
    """The one finished offline run under ``folder/wandb``: its config and its history rows
    (each row's values by key, W&B's own ``_step``/``_runtime``/``_timestamp`` included)."""
    (path,) = (folder / "wandb").glob("offline-run-*/run-*.wandb")
    config: dict[str, Any] = {}
    history = []
    for record in _finished_log(path, timeout_s):
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):  # the config comes with the run or in records after it
            updates = (record.run.config if kind == "run" else record.config).update
            config.update({u.key: json.loads(u.value_json) for u in updates})
        elif kind == "history":
            row = record.history.item
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in row})
    return config, history
