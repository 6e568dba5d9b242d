"""Prometheus text format rendering: escaping, values, and the queue/run metric families."""

from __future__ import annotations

import math
import re

import pytest

from worker import metrics
from worker.runs import RunStats

# One line of the 0.0.4 text format: a comment (HELP/TYPE) or a sample with optional labels.
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
_SAMPLE = re.compile(
    rf"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{{{_LABEL}(,{_LABEL})*\}})? "
    r"(-?[0-9.]+(e[+-]?[0-9]+)?|\+Inf|-Inf|NaN)$"
)
_HELP = re.compile(r"^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*$")
_TYPE = re.compile(r"^# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|summary|histogram|untyped)$")


def assert_valid_exposition(text: str) -> None:
    assert text.endswith("\n")
    seen_types: set[str] = set()
    for line in text.rstrip("\n").split("\n"):
        if line.startswith("# TYPE"):
            name = line.split()[2]
            assert name not in seen_types, f"family {name} declared twice"
            seen_types.add(name)
            assert _TYPE.match(line), line
        elif line.startswith("# HELP"):
            assert _HELP.match(line), line
        else:
            assert _SAMPLE.match(line), line


def test_label_values_are_escaped() -> None:
    assert metrics.escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert metrics.escape_help('say "hi"\\\n') == 'say "hi"\\\\\\n'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3, "3"),
        (3.0, "3"),
        (0.25, "0.25"),
        (-1.5, "-1.5"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_values(value: float, text: str) -> None:
    assert metrics.format_value(value) == text


def test_render_writes_help_type_and_samples() -> None:
    text = metrics.render(
        [
            metrics.Metric(
                "x_total",
                "counter",
                "Things.\nDone",
                [metrics.Sample(2, {"b": "1", "a": 'q"'}), metrics.Sample(0.5)],
            ),
            metrics.Metric(
                "d_seconds",
                "summary",
                "Durations.",
                [metrics.Sample(4.5, {"k": "f"}, "_sum"), metrics.Sample(2, {"k": "f"}, "_count")],
            ),
        ]
    )
    assert text == (
        "# HELP x_total Things.\\nDone\n"
        "# TYPE x_total counter\n"
        'x_total{a="q\\"",b="1"} 2\n'
        "x_total 0.5\n"
        "# HELP d_seconds Durations.\n"
        "# TYPE d_seconds summary\n"
        'd_seconds_sum{k="f"} 4.5\n'
        'd_seconds_count{k="f"} 2\n'
    )
    assert_valid_exposition(text)


def test_invalid_names_are_refused() -> None:
    with pytest.raises(ValueError):
        metrics.render([metrics.Metric("bad-name", "gauge", "h", [])])
    with pytest.raises(ValueError):
        metrics.render([metrics.Metric("ok", "gauge", "h", [metrics.Sample(1, {"bad-l": "v"})])])


QUEUE_STATS = {
    "jobs": [
        {"job_type": "process_email", "status": "pending", "count": 7},
        {"job_type": "process_email", "status": "dead_letter", "count": 1},
    ],
    "oldest_due_seconds": {"process_email": 42.5},
    "breakers": [
        {"service": "imap:store-1", "state": "open"},
        {"service": "anthropic", "state": "closed"},
    ],
}


def test_queue_metrics_from_queue_stats() -> None:
    text = metrics.render(metrics.queue_metrics(QUEUE_STATS))
    assert_valid_exposition(text)
    lines = set(text.splitlines())
    p = metrics.PREFIX
    assert f"{p}queue_stats_up 1" in lines
    assert f'{p}queue_jobs{{job_type="process_email",status="pending"}} 7' in lines
    assert f'{p}queue_jobs{{job_type="process_email",status="dead_letter"}} 1' in lines
    assert f'{p}queue_oldest_due_seconds{{job_type="process_email"}} 42.5' in lines
    assert f'{p}circuit_breaker_state{{service="imap:store-1",state="open"}} 1' in lines
    assert f'{p}circuit_breaker_state{{service="imap:store-1",state="closed"}} 0' in lines
    assert f'{p}circuit_breaker_state{{service="imap:store-1",state="half_open"}} 0' in lines
    assert f'{p}circuit_breaker_state{{service="anthropic",state="closed"}} 1' in lines


def test_unknown_breaker_state_and_odd_rows_do_not_break_rendering() -> None:
    stats = {
        "jobs": [{"job_type": "x", "status": "pending", "count": None}, "junk"],
        "oldest_due_seconds": None,
        "breakers": [{"service": 's"1', "state": "weird"}],
    }
    text = metrics.render(metrics.queue_metrics(stats))
    assert_valid_exposition(text)
    assert f'{metrics.PREFIX}circuit_breaker_state{{service="s\\"1",state="weird"}} 1' in text
    assert "queue_jobs{" not in text


def test_unreachable_database_gives_up_zero_only() -> None:
    text = metrics.render(metrics.queue_metrics(None))
    assert text.splitlines()[-1] == f"{metrics.PREFIX}queue_stats_up 0"
    assert "queue_jobs" not in text


def test_run_metrics() -> None:
    stats = RunStats(
        finished={("fetch", "succeeded"): 3, ("fetch", "failed"): 1},
        duration_sum={"fetch": 12.5},
        duration_count={"fetch": 4},
        running={"fetch": 0, "process": 1},
        last_success={"fetch": 1_700_000_000.0},
    )
    text = metrics.render(metrics.run_metrics(stats))
    assert_valid_exposition(text)
    lines = set(text.splitlines())
    p = metrics.PREFIX
    assert f"# TYPE {p}runs_total counter" in lines
    assert f'{p}runs_total{{kind="fetch",status="succeeded"}} 3' in lines
    assert f'{p}runs_total{{kind="fetch",status="failed"}} 1' in lines
    assert f'{p}runs_in_progress{{kind="process"}} 1' in lines
    assert f'{p}run_duration_seconds_sum{{kind="fetch"}} 12.5' in lines
    assert f'{p}run_duration_seconds_count{{kind="fetch"}} 4' in lines
    assert f'{p}run_duration_seconds_count{{kind="process"}} 0' in lines
    assert f'{p}run_last_success_timestamp_seconds{{kind="fetch"}} 1700000000' in lines
