"""The process shell every role runs in: a work loop in the main thread (``runtime``) and a REST
app beside it (``app``: health, readiness, status, metrics, controls). A role brings a
``Worker``; the shell owns the process around it."""

from common.shell.preflight import (
    EXIT_BAD_SETUP,
    EXIT_RESTART,
    FatalError,
    MustRestart,
    StartupError,
)
from common.shell.runtime import ServiceContext, ServiceRuntime, Worker, default_member_id

__all__ = [
    "EXIT_BAD_SETUP",
    "EXIT_RESTART",
    "FatalError",
    "MustRestart",
    "ServiceContext",
    "ServiceRuntime",
    "StartupError",
    "Worker",
    "default_member_id",
]
