"""Prometheus metrics for `/metrics`, with prometheus-client.

Each app gets its own CollectorRegistry (tests build many apps) holding:
- process metrics (CPU seconds, resident memory, open file descriptors, start time);
- request metrics: `support_worker_http_requests_total{method,endpoint,status}` and
  `support_worker_http_request_duration_seconds{endpoint}`, where endpoint is the route pattern
  (`/runs/<run_id>`), never the raw path, so the label set stays small;
- the queue, read from `queue_stats()` at scrape time, and this container's runs.

Labels are opaque: breakers are per store (`imap:<store id>`, `smtp:...`, `shopify:...`), and a
page that listed them would tell whoever reads it which stores exist and which are failing. They
are counted per kind of service and state instead; job types are the fixed names of the code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from worker import model_cost
from worker.runs import RunStats

# What a scraper that asks for nothing in particular gets: the classic text format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "support_worker_"

# The circuit breaker states of the queue-core SQL; every service kind reports each state (0 when
# none is in it) so alerts can match on state="open" without knowing the others.
BREAKER_STATES = ("closed", "open", "half_open")
# The kinds of breaker the code opens (worker/fetch.py, worker/process.py, the clients' SERVICE).
# Anything else is counted as "other", so an unexpected name can never leak into a label.
SERVICE_KINDS = frozenset({"claude", "imap", "smtp", "shopify"})

QueueStats = Callable[[], Mapping[str, Any] | None]
RunStatsSource = Callable[[], RunStats]
ModelUsageStats = Callable[[], Sequence[Mapping[str, Any]] | None]

# model_usage_stats() fields by the `kind` label they get.
TOKEN_KINDS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_write": "cache_creation_input_tokens",
    "cache_read": "cache_read_input_tokens",
}


def service_kind(service: str) -> str:
    """The kind of a breaker's service name: `shopify:<store id>` -> `shopify`."""
    kind = service.split(":", 1)[0]
    return kind if kind in SERVICE_KINDS else "other"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def queue_families(stats: Mapping[str, Any] | None) -> list[Metric]:
    """Metric families from `queue_stats()` JSON; None (database unreachable) gives up=0 only."""
    up = GaugeMetricFamily(
        PREFIX + "queue_stats_up",
        "1 when queue_stats() answered for this scrape, 0 when the database was unreachable.",
        value=1.0 if stats is not None else 0.0,
    )
    if stats is None:
        return [up]
    jobs = GaugeMetricFamily(
        PREFIX + "queue_jobs",
        "Jobs in the queue by type and status.",
        labels=["job_type", "status"],
    )
    for row in stats.get("jobs") or []:
        if isinstance(row, Mapping) and (n := _number(row.get("count"))) is not None:
            jobs.add_metric([str(row.get("job_type")), str(row.get("status"))], n)
    oldest = GaugeMetricFamily(
        PREFIX + "queue_oldest_due_seconds",
        "Age in seconds of the oldest job that is due and not yet claimed, by type.",
        labels=["job_type"],
    )
    for job_type, value in sorted((stats.get("oldest_due_seconds") or {}).items()):
        if (n := _number(value)) is not None:
            oldest.add_metric([str(job_type)], n)
    counts: dict[tuple[str, str], int] = {}
    for row in stats.get("breakers") or []:
        if not isinstance(row, Mapping):
            continue
        kind = service_kind(str(row.get("service")))
        state = str(row.get("state"))
        state = state if state in BREAKER_STATES else "other"
        for s in BREAKER_STATES:
            counts.setdefault((kind, s), 0)
        counts[(kind, state)] = counts.get((kind, state), 0) + 1
    breakers = GaugeMetricFamily(
        PREFIX + "circuit_breakers",
        "Circuit breakers by kind of service and state (per-store breakers are counted, "
        "never named).",
        labels=["service", "state"],
    )
    for (kind, state), n in sorted(counts.items()):
        breakers.add_metric([kind, state], n)
    return [up, jobs, oldest, breakers]


def run_families(stats: RunStats) -> list[Metric]:
    """Metric families for this container's background runs."""
    kinds = sorted(set(stats.running) | set(stats.duration_count) | {k for k, _ in stats.finished})
    total = CounterMetricFamily(
        PREFIX + "runs",
        "Finished runs in this container by kind and status.",
        labels=["kind", "status"],
    )
    for (kind, status), n in sorted(stats.finished.items()):
        total.add_metric([kind, status], n)
    running = GaugeMetricFamily(
        PREFIX + "runs_in_progress",
        "Runs currently in progress in this container, by kind.",
        labels=["kind"],
    )
    for kind, n in sorted(stats.running.items()):
        running.add_metric([kind], n)
    duration = SummaryMetricFamily(
        PREFIX + "run_duration_seconds",
        "Wall time of finished runs in this container, by kind.",
        labels=["kind"],
    )
    for kind in kinds:
        duration.add_metric(
            [kind], stats.duration_count.get(kind, 0), stats.duration_sum.get(kind, 0.0)
        )
    last = GaugeMetricFamily(
        PREFIX + "run_last_success_timestamp_seconds",
        "Unix time at which the last successful run of each kind finished.",
        labels=["kind"],
    )
    for kind, ts in sorted(stats.last_success.items()):
        last.add_metric([kind], ts)
    return [total, running, duration, last]


def model_usage_families(rows: Sequence[Mapping[str, Any]] | None) -> list[Metric]:
    """Metric families from `model_usage_stats(1)`: the last hour's model tokens, calls and
    list-price cost, per model (None, the database unreachable, gives none)."""
    if rows is None:
        return []
    tokens = GaugeMetricFamily(
        PREFIX + "model_tokens_last_hour",
        "Model tokens of the emails answered in the last hour, by model and kind "
        "(input: uncached input; cache_write, cache_read: the prompt cache's).",
        labels=["model", "kind"],
    )
    calls = GaugeMetricFamily(
        PREFIX + "model_calls_last_hour",
        "Model calls in the last hour, by model.",
        labels=["model"],
    )
    emails = GaugeMetricFamily(
        PREFIX + "model_emails_last_hour",
        "Emails given to the model in the last hour.",
        labels=["model"],
    )
    cost = GaugeMetricFamily(
        PREFIX + "model_cost_usd_last_hour",
        f"What the last hour's model calls cost at list price (read {model_cost.PRICES_READ_ON}).",
        labels=["model"],
    )
    for row in rows:
        if not isinstance(row, Mapping):
            continue
        model = str(row.get("model"))
        for kind, key in TOKEN_KINDS.items():
            if (n := _number(row.get(key))) is not None:
                tokens.add_metric([model, kind], n)
        if (n := _number(row.get("calls"))) is not None:
            calls.add_metric([model], n)
        if (n := _number(row.get("emails"))) is not None:
            emails.add_metric([model], n)
        usage = model_cost.ModelUsage.from_api(dict(row))
        if (usd := model_cost.cost_usd(model, usage)) is not None:
            cost.add_metric([model], usd)
    return [tokens, calls, emails, cost]


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The registry in the format the scraper's Accept header asks for (text or OpenMetrics)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


class QueueCollector(Collector):
    """Reads queue_stats() at each scrape (the database is the only place that knows)."""

    def __init__(self, stats: QueueStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        yield from queue_families(self._stats())


class RunCollector(Collector):
    """This container's run counters at each scrape."""

    def __init__(self, stats: RunStatsSource) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        yield from run_families(self._stats())


class ModelUsageCollector(Collector):
    """Reads model_usage_stats() at each scrape (the events are the record of what was spent)."""

    def __init__(self, usage: ModelUsageStats) -> None:
        self._usage = usage

    def collect(self) -> Iterator[Metric]:
        yield from model_usage_families(self._usage())


class Metrics:
    """An app's registry and its request instruments."""

    def __init__(
        self,
        queue_stats: QueueStats,
        run_stats: RunStatsSource,
        model_usage: ModelUsageStats | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(QueueCollector(queue_stats))
        self.registry.register(RunCollector(run_stats))
        if model_usage is not None:
            self.registry.register(ModelUsageCollector(model_usage))
        self.requests = Counter(
            PREFIX + "http_requests",
            "HTTP requests answered, by method, route and status.",
            ["method", "endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            PREFIX + "http_request_duration_seconds",
            "Time to answer an HTTP request, by route.",
            ["endpoint"],
            registry=self.registry,
        )

    def observe(self, method: str, endpoint: str, status: int, started: float) -> None:
        """Count one answered request that started at `started` (time.perf_counter())."""
        self.requests.labels(method, endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(time.perf_counter() - started)
