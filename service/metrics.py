"""Prometheus metrics of one process, in a registry of its own (no module globals)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

M = TypeVar("M", bound=MetricWrapperBase)

DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
WAIT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900)


class _Readings(Collector):
    """Values read at scrape time from the objects that keep them."""

    def __init__(self) -> None:
        self.counters: dict[str, tuple[str, Callable[[], float]]] = {}
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def collect(self) -> Iterator[Metric]:
        for name, (doc, read) in self.counters.items():
            yield CounterMetricFamily(name, doc, value=read())
        for name, (doc, read) in self.gauges.items():
            yield GaugeMetricFamily(name, doc, value=read())


class Metrics:
    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs_dispatched = Counter(
            "aijobs_jobs_dispatched", "Jobs recorded by dispatch", ["job_type"], registry=r
        )
        self.jobs_started = Counter(
            "aijobs_jobs_started", "Attempts started by this worker", ["job_type"], registry=r
        )
        self.jobs_completed = Counter(
            "aijobs_jobs_completed", "Jobs completed by this worker", ["job_type"], registry=r
        )
        self.jobs_failed = Counter(
            "aijobs_jobs_failed", "Jobs failed by this worker", ["job_type"], registry=r
        )
        self.jobs_retried = Counter(
            "aijobs_jobs_retried", "Attempts that ended in a retry", ["job_type"], registry=r
        )
        self.jobs_snoozed = Counter(
            "aijobs_jobs_snoozed",
            "Attempts sent back to wait for a rate limit or an overloaded provider, at no "
            "attempt's cost",
            ["job_type"],
            registry=r,
        )
        self.job_duration = Histogram(
            "aijobs_job_duration_seconds",
            "Run time of one attempt, claim to outcome",
            ["job_type"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "aijobs_job_queue_wait_seconds",
            "Time from a job being due to an attempt starting",
            ["job_type"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.anthropic_calls = Counter(
            "aijobs_anthropic_calls", "Calls to the Anthropic API", ["model"], registry=r
        )
        self.anthropic_errors = Counter(
            "aijobs_anthropic_errors",
            "Failed calls to the Anthropic API, by status (0: no answer)",
            ["status"],
            registry=r,
        )
        self.anthropic_tokens = Counter(
            "aijobs_anthropic_tokens",
            "Tokens of Anthropic calls by kind (input, output, cache_read, cache_creation)",
            ["kind"],
            registry=r,
        )
        self._readings = _Readings()
        r.register(self._readings)
        self._children: dict[tuple[MetricWrapperBase, str], MetricWrapperBase] = {}

    def of(self, metric: M, label: str) -> M:
        """`metric.labels(label)`, looked up once: a worker counts every job several times."""
        child = self._children.get((metric, label))
        if child is None:
            child = self._children[(metric, label)] = metric.labels(label)
        return child  # type: ignore[return-value]

    def gauge_from(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A gauge whose value is read when scraped."""
        self._readings.gauges[name] = (doc, read)

    def counter_from(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A counter whose (monotonic) value is read when scraped."""
        self._readings.counters[name] = (doc, read)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# Gauge is re-exported for modules that need a plain one.
__all__ = ["Gauge", "Metrics"]
