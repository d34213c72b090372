"""Live progress of ``luffy up``: one table, refreshed every second (a log line every 15 s when
stdout is not a terminal), and the plot of metrics.jsonl redrawn every minute.

Reads only: Redis (members, queue depths, policy version) and the services' /status.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from common.config import Config

log = logging.getLogger("luffy.up")
PLOT_EVERY_S = 60.0


class Dashboard:
    def __init__(self, cfg: Config, redis_url: str, supervisor: Any):
        from common.transport import Resilient
        from services.status import status_client

        redis = cfg.redis.model_copy(update={"url": redis_url})
        self.cfg, self.supervisor = cfg, supervisor
        self.view = cfg.model_copy(update={"redis": redis})
        # kept for the whole run: reconnecting every second cost more CPU than the reads
        self.redis = Resilient.from_config(redis)
        self.http = status_client()
        self.interactive = sys.stdout.isatty()
        self.live: Any = None
        self._next = 0.0
        self._next_line = 0.0
        self._next_plot = time.monotonic() + PLOT_EVERY_S
        self.last: dict[str, Any] = {}

    def __enter__(self) -> Dashboard:
        if self.interactive:
            from rich.live import Live

            self.live = Live(refresh_per_second=2, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        if self.live is not None:
            self.live.__exit__(*exc)

    def snapshot(self) -> dict[str, Any]:
        from services.status import collect

        return collect(self.view, with_services=True, redis_=self.redis, http=self.http)

    def refresh(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + 1.0
        try:
            self.last = self.snapshot()
        except Exception as exc:  # the dashboard must never take the stack down
            log.debug("dashboard snapshot failed: %s", exc)
            return
        self._write_targets()
        if self.live is not None:
            self.live.update(self.render())
        elif now >= self._next_line:
            self._next_line = now + 15.0
            log.info("%s", self.line())
        if now >= self._next_plot:
            self._next_plot = now + PLOT_EVERY_S
            self.plot()

    def _write_targets(self) -> None:
        """Prometheus file_sd targets of the running services (deploy/prometheus reads them)."""
        groups = [
            {
                "targets": [f"{m['host']}:{m['port']}"],
                "labels": {"role": role, "member": str(m["id"]), "run": self.cfg.run.name},
            }
            for role, members in self.last.get("members", {}).items()
            for m in members
            if m.get("port")
        ]
        path = targets_path(self.cfg)
        text = json.dumps(groups, indent=1, sort_keys=True)
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)  # Prometheus must never read a half-written file

    def _learner(self) -> dict[str, Any]:
        statuses = self.last.get("statuses", {}).get("learner") or [{}]
        return statuses[0]

    def _tokens_per_s(self) -> float:
        gens = self.last.get("statuses", {}).get("generator", [])
        return sum(float(s.get("tokens_per_s") or 0) for s in gens)

    def line(self) -> str:
        lrn, streams = self._learner(), self.last.get("streams", {})
        reward = lrn.get("reward_mean")
        held = (lrn.get("last_eval") or {}).get("reward_mean")
        return (
            f"step {lrn.get('step', '-')}/{lrn.get('max_steps', '-')} "
            f"reward {reward if reward is None else round(reward, 3)} "
            f"held-out {held if held is None else round(held, 3)} "
            f"version {self.last.get('policy_version')} "
            f"queues prompts {streams.get('prompts', {}).get('lag', 0)} "
            f"rollouts {streams.get('rollouts', {}).get('lag', 0)} "
            f"scored {streams.get('scored', {}).get('lag', 0)} "
            f"tokens/s {self._tokens_per_s():.0f} "
            f"restarts {sum(c.restarts for c in self.supervisor.children)}"
        )

    def render(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        lrn = self._learner()
        top = Table(title=f"luffy up: run {self.cfg.run.name}", show_header=True)
        for col in (
            "step",
            "reward (train)",
            "held-out reward",
            "entropy",
            "policy version",
            "tokens/s",
            "stale dropped",
            "restarts",
        ):
            top.add_column(col)
        resolved = lrn.get("resolved") or {}
        held = (lrn.get("last_eval") or {}).get("reward_mean")
        top.add_row(
            f"{lrn.get('step', '-')}/{lrn.get('max_steps', '-')}",
            _fmt(lrn.get("reward_mean")),
            _fmt(held),
            _fmt(lrn.get("entropy")),
            str(self.last.get("policy_version")),
            f"{self._tokens_per_s():.0f}",
            str(resolved.get("stale", 0)),
            str(sum(c.restarts for c in self.supervisor.children)),
        )
        procs = Table("process", "pid", "state", "restarts", "log")
        for child in self.supervisor.children:
            state = "running" if child.running() else f"waiting (exits {child.exits[-3:]})"
            pid = str(child.proc.pid) if child.running() else "-"
            procs.add_row(child.name, pid, state, str(child.restarts), str(child.log_path))
        queues = Table("stream", "length", "not yet read", "unacked")
        for name, depth in self.last.get("streams", {}).items():
            queues.add_row(name, *(str(depth.get(k, "")) for k in ("length", "lag", "pending")))
        events = "\n".join(self.supervisor.events[-5:])
        return Group(top, procs, queues, events)

    def plot(self) -> None:
        from services.plot import plot_runs

        metrics = self.cfg.run.run_dir / "metrics.jsonl"
        if metrics.exists():
            out = plot_runs(
                {self.cfg.algorithm.mode: metrics},
                self.cfg.run.run_dir / "plot.png",
                f"run {self.cfg.run.name} ({self.cfg.algorithm.mode})",
            )
            log.debug("plot written to %s", out)

    def final(self) -> None:
        self.plot()
        targets_path(self.cfg).unlink(missing_ok=True)
        from services.plot import read_metrics

        train, evals = read_metrics(self.cfg.run.run_dir / "metrics.jsonl")
        held = evals[-1]["reward_mean"] if evals else None
        steps = train[-1]["step"] if train else 0
        log.info(
            "done: %d steps, last held-out reward %s; metrics %s, plot %s",
            steps,
            held,
            self.cfg.run.run_dir / "metrics.jsonl",
            self.cfg.run.run_dir / "plot.png",
        )


def targets_path(cfg: Config) -> Path:
    return cfg.run.output_dir / "prometheus-targets" / f"{cfg.run.name}.json"


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


__all__ = ["Dashboard", "targets_path"]
