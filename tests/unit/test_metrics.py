"""The /metrics families (prometheus-client): queue stats with opaque labels, run counters, and
the registry an app exposes, read back with the library's own parser."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker import metrics
from worker.runs import RunStats

P = metrics.PREFIX
STORE_A = "5b0c7d8e-1111-4a4a-9c9c-000000000001"
STORE_B = "5b0c7d8e-2222-4a4a-9c9c-000000000002"

QUEUE_STATS = {
    "jobs": [
        {"job_type": "process_email", "status": "pending", "count": 7},
        {"job_type": "process_email", "status": "dead_letter", "count": 1},
    ],
    "oldest_due_seconds": {"process_email": 42.5},
    "breakers": [
        {"service": f"imap:{STORE_A}", "state": "open"},
        {"service": f"imap:{STORE_B}", "state": "open"},
        {"service": f"shopify:{STORE_A}", "state": "half_open"},
        {"service": "claude", "state": "closed"},
    ],
}
NO_RUNS = RunStats(finished={}, duration_sum={}, duration_count={}, running={}, last_success={})

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def exposition(queue: Any = QUEUE_STATS, runs: RunStats = NO_RUNS) -> str:
    collected = metrics.Metrics(lambda: queue, lambda: runs)
    return generate_latest(collected.registry).decode()


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def test_queue_stats_become_gauges() -> None:
    found = samples(exposition())
    assert value(found, P + "queue_stats_up") == 1
    assert value(found, P + "queue_jobs", job_type="process_email", status="pending") == 7
    assert value(found, P + "queue_jobs", job_type="process_email", status="dead_letter") == 1
    assert value(found, P + "queue_oldest_due_seconds", job_type="process_email") == 42.5


def test_breakers_are_counted_per_kind_and_never_name_a_store() -> None:
    text = exposition()
    found = samples(text)
    assert value(found, P + "circuit_breakers", service="imap", state="open") == 2
    assert value(found, P + "circuit_breakers", service="imap", state="closed") == 0
    assert value(found, P + "circuit_breakers", service="shopify", state="half_open") == 1
    assert value(found, P + "circuit_breakers", service="claude", state="closed") == 1
    assert STORE_A not in text and STORE_B not in text


def test_odd_rows_and_unknown_names_do_not_leak_or_break() -> None:
    stats = {
        "jobs": [{"job_type": "x", "status": "pending", "count": None}, "junk"],
        "oldest_due_seconds": None,
        "breakers": [{"service": 'secret-store"name', "state": "weird"}],
    }
    text = exposition(stats)
    found = samples(text)
    assert value(found, P + "circuit_breakers", service="other", state="other") == 1
    assert "secret-store" not in text
    assert not any(name == P + "queue_jobs" for name, _ in found)


def test_unreachable_database_gives_up_zero_and_the_rest_still_answers() -> None:
    found = samples(exposition(None))
    assert value(found, P + "queue_stats_up") == 0
    assert not any(name == P + "queue_jobs" for name, _ in found)
    assert value(found, "process_cpu_seconds_total") >= 0


def test_run_counters() -> None:
    stats = RunStats(
        finished={("fetch", "succeeded"): 3, ("fetch", "failed"): 1},
        duration_sum={"fetch": 12.5},
        duration_count={"fetch": 4},
        running={"fetch": 0, "process": 1},
        last_success={"fetch": 1_700_000_000.0},
    )
    text = exposition(runs=stats)
    assert f"# TYPE {P}runs_total counter" in text.splitlines()
    found = samples(text)
    assert value(found, P + "runs_total", kind="fetch", status="succeeded") == 3
    assert value(found, P + "runs_total", kind="fetch", status="failed") == 1
    assert value(found, P + "runs_in_progress", kind="process") == 1
    assert value(found, P + "run_duration_seconds_sum", kind="fetch") == 12.5
    assert value(found, P + "run_duration_seconds_count", kind="fetch") == 4
    assert value(found, P + "run_duration_seconds_count", kind="process") == 0
    assert value(found, P + "run_last_success_timestamp_seconds", kind="fetch") == 1_700_000_000


def test_requests_are_counted_by_route() -> None:
    collected = metrics.Metrics(lambda: None, lambda: NO_RUNS)
    collected.observe("GET", "/runs/<run_id>", 404, 0.0)
    found = samples(generate_latest(collected.registry).decode())
    labels = {"method": "GET", "endpoint": "/runs/<run_id>", "status": "404"}
    assert value(found, P + "http_requests_total", **labels) == 1
    assert value(found, P + "http_request_duration_seconds_count", endpoint="/runs/<run_id>") == 1


def test_the_format_follows_the_accept_header() -> None:
    registry = metrics.Metrics(lambda: None, lambda: NO_RUNS).registry
    body, content_type = metrics.exposition(registry, None)
    assert content_type == metrics.CONTENT_TYPE and body.startswith(b"# HELP")
    body, content_type = metrics.exposition(registry, "application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_service_kinds() -> None:
    assert metrics.service_kind(f"smtp:{STORE_A}") == "smtp"
    assert metrics.service_kind("claude") == "claude"
    assert metrics.service_kind(STORE_A) == "other"


def test_the_last_hours_model_usage_becomes_token_call_and_cost_gauges() -> None:
    usage = [
        {
            "model": "claude-haiku-4-5",
            "emails": 10,
            "calls": 11,
            "input_tokens": 17_000,
            "output_tokens": 1_800,
            "cache_creation_input_tokens": 4_000,
            "cache_read_input_tokens": 40_000,
        },
        {"model": "offline-responder", "emails": 2, "calls": 0, "input_tokens": 0},
    ]
    collected = metrics.Metrics(lambda: QUEUE_STATS, lambda: NO_RUNS, lambda: usage)
    found = samples(generate_latest(collected.registry).decode())
    haiku = {"model": "claude-haiku-4-5"}
    assert value(found, P + "model_tokens_last_hour", kind="input", **haiku) == 17_000
    assert value(found, P + "model_tokens_last_hour", kind="cache_read", **haiku) == 40_000
    assert value(found, P + "model_tokens_last_hour", kind="cache_write", **haiku) == 4_000
    assert value(found, P + "model_calls_last_hour", **haiku) == 11
    assert value(found, P + "model_emails_last_hour", **haiku) == 10
    # $1 per million uncached input, $1.25 cache writes, $0.10 cache reads, $5 output.
    expected = (17_000 * 1.00 + 4_000 * 1.25 + 40_000 * 0.10 + 1_800 * 5.00) / 1_000_000
    assert abs(value(found, P + "model_cost_usd_last_hour", **haiku) - expected) < 1e-12
    # A model without a list price gets tokens but no made-up cost.
    assert value(found, P + "model_emails_last_hour", model="offline-responder") == 2
    assert ("model_cost_usd_last_hour", frozenset({("model", "offline-responder")})) not in found


def test_an_unreachable_database_leaves_model_usage_out() -> None:
    collected = metrics.Metrics(lambda: QUEUE_STATS, lambda: NO_RUNS, lambda: None)
    found = samples(generate_latest(collected.registry).decode())
    assert not any(name.startswith(P + "model_") for name, _ in found)
