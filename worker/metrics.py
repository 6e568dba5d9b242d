"""Prometheus text exposition format 0.0.4, rendered from plain data (no I/O, no client library).

`queue_metrics()` turns the JSON of the `queue_stats()` SQL function into metric families,
`run_metrics()` does the same for this container's run counters, and `render()` writes them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from worker.runs import RunStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "support_worker_"

MetricType = Literal["counter", "gauge", "summary", "untyped"]

# The circuit breaker states of the queue-core SQL; each breaker reports one sample per state
# (1 for its current state) so alerts can match on state="open" without knowing the others.
BREAKER_STATES = ("closed", "open", "half_open")

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Sample:
    """One line of a family: optional name suffix (e.g. `_sum`), labels, value."""

    value: float
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    suffix: str = ""


@dataclasses.dataclass(frozen=True)
class Metric:
    """A metric family: one HELP and TYPE line, then its samples."""

    name: str
    type: MetricType
    help: str
    samples: Sequence[Sample]


def escape_label_value(value: str) -> str:
    """Escape a label value: backslash, double quote and line feed."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """Escape HELP text: backslash and line feed (quotes stay as they are)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it (integers without a fraction, +Inf, NaN)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _format_labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    for key in labels:
        if not _LABEL_RE.match(key) or key.startswith("__"):
            raise ValueError(f"invalid label name: {key!r}")
    inner = ",".join(f'{k}="{escape_label_value(str(v))}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def render(metrics: Iterable[Metric]) -> str:
    """Render metric families in the text format; ends with a newline as the format requires."""
    lines: list[str] = []
    for metric in metrics:
        if not _NAME_RE.match(metric.name):
            raise ValueError(f"invalid metric name: {metric.name!r}")
        lines.append(f"# HELP {metric.name} {escape_help(metric.help)}")
        lines.append(f"# TYPE {metric.name} {metric.type}")
        for sample in metric.samples:
            name = metric.name + sample.suffix
            lines.append(f"{name}{_format_labels(sample.labels)} {format_value(sample.value)}")
    return "\n".join(lines) + "\n"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def queue_metrics(stats: Mapping[str, Any] | None) -> list[Metric]:
    """Metric families from `queue_stats()` JSON; None (database unreachable) gives up=0 only."""
    up = Metric(
        PREFIX + "queue_stats_up",
        "gauge",
        "1 when queue_stats() answered for this scrape, 0 when the database was unreachable.",
        [Sample(1.0 if stats is not None else 0.0)],
    )
    if stats is None:
        return [up]
    jobs = [
        Sample(n, {"job_type": str(row.get("job_type")), "status": str(row.get("status"))})
        for row in stats.get("jobs") or []
        if isinstance(row, Mapping) and (n := _number(row.get("count"))) is not None
    ]
    oldest = [
        Sample(n, {"job_type": str(job_type)})
        for job_type, value in sorted((stats.get("oldest_due_seconds") or {}).items())
        if (n := _number(value)) is not None
    ]
    breakers: list[Sample] = []
    for row in stats.get("breakers") or []:
        if not isinstance(row, Mapping):
            continue
        service, state = str(row.get("service")), str(row.get("state"))
        states = BREAKER_STATES if state in BREAKER_STATES else (*BREAKER_STATES, state)
        breakers.extend(
            Sample(1.0 if s == state else 0.0, {"service": service, "state": s}) for s in states
        )
    return [
        up,
        Metric(PREFIX + "queue_jobs", "gauge", "Jobs in the queue by type and status.", jobs),
        Metric(
            PREFIX + "queue_oldest_due_seconds",
            "gauge",
            "Age in seconds of the oldest job that is due and not yet claimed, by type.",
            oldest,
        ),
        Metric(
            PREFIX + "circuit_breaker_state",
            "gauge",
            "Circuit breaker state by service: 1 for the current state, 0 for the others.",
            breakers,
        ),
    ]


def run_metrics(stats: RunStats) -> list[Metric]:
    """Metric families for this container's background runs."""
    kinds = sorted(set(stats.running) | set(stats.duration_count) | {k for k, _ in stats.finished})
    duration: list[Sample] = []
    for kind in kinds:
        duration.append(Sample(stats.duration_sum.get(kind, 0.0), {"kind": kind}, "_sum"))
        duration.append(Sample(stats.duration_count.get(kind, 0), {"kind": kind}, "_count"))
    return [
        Metric(
            PREFIX + "runs_total",
            "counter",
            "Finished runs in this container by kind and status.",
            [
                Sample(n, {"kind": kind, "status": status})
                for (kind, status), n in sorted(stats.finished.items())
            ],
        ),
        Metric(
            PREFIX + "runs_in_progress",
            "gauge",
            "Runs currently in progress in this container, by kind.",
            [Sample(n, {"kind": kind}) for kind, n in sorted(stats.running.items())],
        ),
        Metric(
            PREFIX + "run_duration_seconds",
            "summary",
            "Wall time of finished runs in this container, by kind.",
            duration,
        ),
        Metric(
            PREFIX + "run_last_success_timestamp_seconds",
            "gauge",
            "Unix time at which the last successful run of each kind finished.",
            [Sample(ts, {"kind": kind}) for kind, ts in sorted(stats.last_success.items())],
        ),
    ]
