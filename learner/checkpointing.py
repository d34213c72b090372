"""When the learner writes checkpoints, and how it stays resumable when one cannot be written.

``Checkpointing`` owns the step of the last good checkpoint and the count of failed writes in
a row. A failed write (disk full, folder unwritable) keeps the previous checkpoint's guarantees:
nothing trained since it is acked (a restart trains it again); it retries at the next
checkpoint and stops the learner (one line, exit 2) after ``MAX_FAILURES`` in a row rather than
train on for hours that a crash would lose.
"""

from __future__ import annotations

import logging
from typing import Any

from common.shell import FatalError
from learner.checkpoint import CheckpointFailed, list_checkpoints
from learner.collective import Ranks

log = logging.getLogger(__name__)
MAX_FAILURES = 3


class Checkpointing:
    def __init__(self, ranks: Ranks, root: str, keep_last: int, export_hf: bool):
        self.ranks, self.root, self.keep_last, self.export_hf = ranks, root, keep_last, export_hf
        self.step = 0  # of the last good checkpoint
        self.failures = 0  # in a row
        self.error = ""  # the last failure, until a write succeeds

    @property
    def behind(self) -> bool:
        """Steps trained since the last good checkpoint, and writing still worth trying."""
        return self.ranks.step > self.step and self.failures < MAX_FAILURES

    def newest(self) -> str | None:
        good = list_checkpoints(self.root)
        return good[-1] if good else None

    def write(self, extra: dict[str, Any]) -> str | None:
        """Write a checkpoint of the current step; its path, or None when writing failed."""
        try:
            path = self.ranks.save(self.root, extra, self.keep_last, self.export_hf)
        except CheckpointFailed as exc:
            self._failed(exc)
            return None
        self.failures, self.error, self.step = 0, "", self.ranks.step
        log.info("checkpoint %s", path)
        return path

    def _failed(self, exc: CheckpointFailed) -> None:
        self.failures += 1
        newest = self.newest()
        kept = f"the newest good checkpoint is {newest}" if newest else "no checkpoint yet"
        self.error = (
            f"checkpoint at step {self.ranks.step} failed ({exc}); {kept}; scored entries "
            "since it stay unacked and a restart trains them again"
        )
        if self.failures >= MAX_FAILURES:
            raise FatalError(
                f"{self.error}. {self.failures} checkpoints in a row failed: free space in "
                f"{self.root} (or make it writable) and continue the run (luffy up resumes)"
            )
        log.error(
            "%s; retrying at the next checkpoint (%d of %d in a row)",
            self.error,
            self.failures,
            MAX_FAILURES,
        )


__all__ = ["MAX_FAILURES", "Checkpointing"]
