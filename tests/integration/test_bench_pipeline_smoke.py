"""A tiny run of bench/pipeline.py, so the whole-pipeline benchmark cannot rot.

It runs the command as a person would, on its own scratch database in the test cluster, with
no added latency, and checks that every email got its reply and the table came out. No timing
is asserted: the numbers of a 2-core test box mean nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUN_WAIT = 600  # seconds; bounds a hung run (local-db --fresh, servers, gunicorn), never asserted


def test_the_pipeline_benchmark_answers_every_email(database_url: str) -> None:
    port = urlsplit(database_url).port or 5432
    emails, stores = 24, 3
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "pipeline.py"),
            "--emails",
            str(emails),
            "--stores",
            str(stores),
            "--concurrency",
            "8",
            "--claude-latency",
            "0",
            "--shopify-latency",
            "0",
            "--pgport",
            str(port),
            # A scratch database of its own: the worker claims every queued job it can see.
            "--database",
            "bench_pipeline_smoke",
            # The test cluster is shared: never restart it to load pg_stat_statements.
            "--no-pg-stat-statements",
            "--timeout",
            "300",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_WAIT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    table = "\n".join(lines[:-1])

    assert result["emails"] == emails and result["replies"] == emails
    assert result["stores"] == stores
    # Every email asks Claude once (classification and reply, decision 0025); most mention an
    # order, so Shopify is used.
    assert result["claude_calls_per_email"] == 1.0
    assert 0 < result["shopify_calls_per_email"] <= 3
    assert result["latency_median_s"] > 0 and result["latency_p95_s"] >= result["latency_median_s"]
    assert result["db_xacts_per_email"] > 0
    assert result["db_statements_per_email"] is None  # not loaded on the shared test cluster
    assert result["worker_cpu_ms_per_email"] > 0
    assert result["settings"]["PROCESS_CONCURRENCY"] == 8
    for label in ("emails per hour", "latency arrival->reply p95", "worker CPU per email"):
        assert label in table
