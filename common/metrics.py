"""Prometheus helpers: one registry per service, names ``luffy_<service>_<what>_<unit>``."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

UNITS = (
    "total",
    "seconds",
    "bytes",
    "tokens",
    "ratio",
    "count",
    "info",
    "version",
    "steps",
    "nats",
    "value",  # unitless quantities (losses, gradient norms, learning rates)
)
_NAME = re.compile(r"^[a-z][a-z0-9_]*_(" + "|".join(UNITS) + r")$")
disable_created_metrics()  # no *_created series: dashboards never use them
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class MetricNameError(ValueError):
    pass


class _Callback:
    """A collector reading current values at scrape time (for counters kept elsewhere)."""

    def __init__(self, name: str, doc: str, kind: str, read: Callable[[], float | dict]):
        self.name, self.doc, self.kind, self.read = name, doc, kind, read

    def collect(self) -> Iterable:
        value = self.read()
        labelled = isinstance(value, dict)
        family_cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        family = family_cls(self.name, self.doc, labels=["reason"] if labelled else None)
        if labelled:
            for label, v in sorted(value.items()):
                family.add_metric([str(label)], float(v))
        else:
            family.add_metric([], float(value))
        yield family


class Metrics:
    """Factory of metrics under one service's own registry."""

    def __init__(self, service: str):
        if not re.fullmatch(r"[a-z][a-z0-9]*", service):
            raise MetricNameError(f"service name {service!r} must be lowercase alphanumeric")
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self.names: list[str] = []

    def _name(self, what: str) -> str:
        name = f"luffy_{self.service}_{what}"
        if not _NAME.match(name):
            raise MetricNameError(f"metric {name!r} must end with a unit: one of {UNITS}")
        self.names.append(name)
        return name

    def counter(self, what: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        if not what.endswith("_total"):
            raise MetricNameError(f"counter {what!r} must end with _total")
        return Counter(self._name(what), doc, labels, registry=self.registry)

    def gauge(self, what: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(self._name(what), doc, labels, registry=self.registry)

    def histogram(
        self, what: str, doc: str, labels: Sequence[str] = (), buckets=LATENCY_BUCKETS
    ) -> Histogram:
        return Histogram(self._name(what), doc, labels, registry=self.registry, buckets=buckets)

    def counter_fn(self, what: str, doc: str, read: Callable[[], float | dict]) -> None:
        """A counter whose value (or ``{reason: value}``) is read from ``read`` at scrape time."""
        if not what.endswith("_total"):
            raise MetricNameError(f"counter {what!r} must end with _total")
        name = self._name(what)
        self.registry.register(_Callback(name.removesuffix("_total"), doc, "counter", read))

    def gauge_fn(self, what: str, doc: str, read: Callable[[], float | dict]) -> None:
        self.registry.register(_Callback(self._name(what), doc, "gauge", read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["LATENCY_BUCKETS", "UNITS", "MetricNameError", "Metrics"]
