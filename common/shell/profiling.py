"""Optional cProfile of a service's work loop (``run.profile_dir``): start-up is left out,
so the profile shows the steady state; written when the loop ends (SIGTERM included)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def profiled(folder: Path | None, name: str) -> Iterator[None]:
    """Profile the block into ``folder/name.prof`` when ``folder`` is set; else do nothing."""
    if folder is None:
        yield
        return
    import cProfile

    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        folder.mkdir(parents=True, exist_ok=True)
        profile.dump_stats(folder / f"{name}.prof")
