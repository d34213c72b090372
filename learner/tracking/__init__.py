"""Experiment trackers (W&B, TensorBoard) that the learner mirrors its ``metrics.jsonl`` rows to
when ``[tracking]`` turns them on.

``metrics.jsonl`` stays the source of truth: ``Trackers`` hands each row, flattened to numbers
(``tracker_row``), to every tracker, and a tracker that raises is logged once and dropped for
the rest of the run instead of stopping training. Each backend lives in a module of its own
that imports its package only when built, so a learner with tracking off imports neither
package and runs without them installed; ``check_trackers`` refuses a start whose configured
tracker cannot be imported, in one line naming the package and the extra.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable, Mapping
from numbers import Real
from typing import Any, Protocol

from common.config import Config, TrackingConfig
from common.shell import StartupError

log = logging.getLogger(__name__)
EXTRA = "luffy-async[tracking]"
# [tracking.<section>] -> the package its tracker imports
PACKAGES = {"wandb": "wandb", "tensorboard": "tensorboard"}
# Row keys that are not series: how rows are laid out (kind, step) or the wall clock, which
# every tracker records on its own.
NOT_SERIES = {"kind", "step", "time"}


class Tracker(Protocol):
    """One experiment tracker: it takes flattened rows at the learner's step."""

    name: str

    def log(self, row: Mapping[str, float], step: int) -> None:
        """Record ``row`` (series name -> value) at training step ``step``; steps may come out
        of order (an evaluation of step N finishes after steps N+1.. were logged)."""
        ...

    def close(self) -> None:
        """Flush and release what the tracker holds (called once, at the learner's end)."""
        ...


def flatten_numbers(row: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numbers of ``row`` by name; nested mappings become ``<key>/<name>`` (``reward_by_source``
    -> ``reward_by_source/<source>``), booleans 0/1, anything else (text, lists) is left out."""
    out: dict[str, float] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_numbers(value, f"{name}/"))
        elif isinstance(value, Real):
            out[name] = float(value)
    return out


def tracker_row(row: Mapping[str, Any]) -> tuple[int, dict[str, float]]:
    """A metrics.jsonl row as a tracker takes it: its step, and its numbers under its kind
    (``train/loss``, ``eval/reward_mean``), so a train and an eval series of the same name stay
    apart and each kind is one group in the trackers' views."""
    kind = str(row.get("kind", "train"))
    series = flatten_numbers({k: v for k, v in row.items() if k not in NOT_SERIES})
    return int(row.get("step", 0)), {f"{kind}/{name}": value for name, value in series.items()}


def check_trackers(tracking: TrackingConfig) -> None:
    """Refuse a start whose configured tracker's package cannot be imported (before the model
    loads, so the mistake costs seconds)."""
    for section, package in PACKAGES.items():
        if getattr(tracking, section) is None:
            continue
        try:
            importlib.import_module(package)
        except ImportError as exc:
            raise StartupError(
                f"tracking.{section} is set but the {package} package cannot be imported "
                f"({exc}): install it with pip install '{EXTRA}', or remove [tracking.{section}]"
            ) from None


def _wandb(cfg: Config) -> Tracker:
    from learner.tracking.wandb_run import WandbTracker

    return WandbTracker(cfg)


def _tensorboard(cfg: Config) -> Tracker:
    from learner.tracking.tensorboard_events import TensorBoardTracker

    return TensorBoardTracker(cfg)


BUILDERS: dict[str, Callable[[Config], Tracker]] = {"wandb": _wandb, "tensorboard": _tensorboard}


def make_trackers(cfg: Config) -> list[Tracker]:
    """The trackers ``cfg.tracking`` turns on (none by default). One that cannot start (W&B
    online without a login, say) refuses the start, naming its section."""
    check_trackers(cfg.tracking)
    trackers: list[Tracker] = []
    for section, build in BUILDERS.items():
        if getattr(cfg.tracking, section) is None:
            continue
        try:
            trackers.append(build(cfg))
        except Exception as exc:
            Trackers(trackers).close()
            raise StartupError(f"tracking.{section}: the tracker cannot start: {exc}") from None
    return trackers


class Trackers:
    """Every tracker of the run, fed each metrics.jsonl row (rank 0's telemetry only)."""

    def __init__(self, trackers: Iterable[Tracker] = ()):
        self.active = list(trackers)

    def log_row(self, row: Mapping[str, Any]) -> None:
        if not self.active:
            return
        step, values = tracker_row(row)
        for tracker in list(self.active):
            try:
                tracker.log(values, step)
            except Exception as exc:  # a tracker must never stop training
                log.error(
                    "tracker %s failed (%s: %s); it is off for the rest of this run "
                    "(metrics.jsonl keeps every row)",
                    tracker.name,
                    type(exc).__name__,
                    exc,
                )
                self.active.remove(tracker)
                _close_quietly(tracker)

    def close(self) -> None:
        for tracker in self.active:
            _close_quietly(tracker)
        self.active = []


def _close_quietly(tracker: Tracker) -> None:
    try:
        tracker.close()
    except Exception as exc:  # at the end of a run, or of a tracker that already failed
        log.warning("closing tracker %s failed: %s: %s", tracker.name, type(exc).__name__, exc)


__all__ = [
    "Tracker",
    "Trackers",
    "check_trackers",
    "flatten_numbers",
    "make_trackers",
    "tracker_row",
]
