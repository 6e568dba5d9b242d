"""A tiny run of bench/scale.py, so the scale-out benchmark cannot rot.

It runs the command as a person would, on its own scratch database in the test cluster, with
one and two worker instances, no Claude or Shopify latency and a short IMAP round trip through
the latency proxy, and checks that every email of every row got its reply and the table came
out. No timing is asserted: the numbers of a 2-core test box mean nothing.
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


def test_the_scale_benchmark_answers_every_email_with_one_and_two_instances(
    database_url: str,
) -> None:
    port = urlsplit(database_url).port or 5432
    stores = 4
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "scale.py"),
            "--stores",
            str(stores),
            "--workers",
            "1,2",
            "--claude-latency",
            "0",
            "--shopify-latency",
            "0",
            "--imap-rtt",
            "0.01",
            "--pgport",
            str(port),
            # A scratch database of its own: the instances claim every queued job they see.
            "--database",
            "bench_scale_smoke",
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

    assert [row["workers"] for row in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert row["emails"] == stores and row["stores"] == stores
        assert row["sweep_s"] > 0 and row["wall_s"] >= row["sweep_s"]
        assert row["p95_s"] >= row["p50_s"] > 0
        assert row["slowest_store_s"] >= row["p50_s"]
        assert row["xacts_per_email"] > 0 and row["rows_written_per_email"] > 0
        assert row["wal_kb_per_email"] > 0
        assert row["worker_cpu_ms_per_email"] > 0 and row["postgres_cpu_ms_per_email"] > 0
        assert row["statements_per_email"] is None  # not loaded on the shared test cluster
        assert row["connections_max"] >= 1
        # every email is stored and answered: a message, a reply and a job per email at least
        by_table = row["extra"]["rows_per_email_by_table"]
        assert by_table["public.messages"] >= 1 and by_table["public.replies"] >= 1
    idle = result["idle_sweep"]
    assert idle["stores"] == stores and idle["xacts_per_store"] > 0
    for label in ("instances", "emails/h", "p95 s", "slowest store s", "WAL KB/email"):
        assert label in table
