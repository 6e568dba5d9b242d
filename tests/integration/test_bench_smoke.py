"""Tiny runs of bench/queue.py, bench/depth.py, bench/server_cost.py, bench/hostile_parse.py,
bench/fairness.py and bench/fetch_bound.py so they cannot rot.

They run as the README says (the real CLI, as a subprocess) against the test database, told it
is shared so they touch only their own job types. Nothing here looks at timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def dsn(request: pytest.FixtureRequest) -> str:
    """The shared test database, or DATABASE_URL until tests/support/postgres.py provides it."""
    try:
        return str(request.getfixturevalue("database_url"))
    except pytest.FixtureLookupError:
        return os.environ["DATABASE_URL"]


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_queue_bench_drains_every_job_through_our_rows_and_the_floor(
    dsn: str, tmp_path: Path
) -> None:
    out = tmp_path / "queue.json"
    done = run_bench(
        "queue.py",
        "--url",
        dsn,
        "--shared-database",
        "--only",
        "ours,rest,floor",
        "--jobs",
        "300",
        "--runs",
        "2",
        "--connections",
        "3",
        "--batch",
        "20",
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    header, _rule, *rows = done.stdout.splitlines()[2:]
    assert header.split()[:2] == ["contender", "settings"]
    assert [row.split("  ")[0].strip() for row in rows] == [
        "ours-psycopg",
        "ours-rest",
        "floor (bare SQL)",
    ]
    result = json.loads(out.read_text())
    assert result["jobs"] == 300
    for measurement in result["results"]:
        # one rate per run for each of the three phases, all from completed drains
        assert len(measurement["drain"]) == 2
        assert all(rate > 0 for rate in measurement["enqueue"] + measurement["drain"])
    with psycopg.connect(dsn) as conn:
        left = conn.execute(
            "select status, count(*) from public.job_queue where job_type = 'bench_noop'"
            " group by status"
        ).fetchall()
        claimed = conn.execute(
            "select count(*) from public.job_queue q where q.job_type = 'bench_noop'"
            " and q.attempt_count = 1 and q.locked_by is not null and q.started_at is not null"
        ).fetchone()
    # the last run's jobs: every one completed, each claimed exactly once
    assert left == [("completed", 300)]
    assert claimed == (300,)


def test_depth_bench_quick_run_measures_every_depth_and_the_purge(dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "depth.json"
    done = run_bench("depth.py", "--url", dsn, "--shared-database", "--quick", "--json", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert [d["depth"] for d in result["depths"]] == [0, 2000]
    assert all(d["median_ms"] > 0 and d["drain_per_s"] > 0 for d in result["depths"])
    purge = result["purge"]
    # the 8-day-old history was deleted while claims went on
    assert purge["history_before"] == 2000
    assert purge["old_history_after"] == 0
    assert purge["rounds_during"] >= 1
    assert "flatness:" in done.stdout


def test_server_cost_bench_drains_every_contender_inside_postgres(dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "server.json"
    done = run_bench(
        "server_cost.py",
        "--url",
        dsn,
        "--jobs",
        "200",
        "--runs",
        "1",
        "--sessions",
        "2",
        "--batch",
        "20",
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    header, _rule, *rows = done.stdout.splitlines()[1:]
    assert header.startswith("contender")
    assert [row.split("  ")[0].strip() for row in rows] == [
        "floor (bare SQL)",
        "ours, no conversation",
        "ours",
    ]
    result = json.loads(out.read_text())
    for series in ("single_session_us_per_job", "sessions_jobs_per_second"):
        assert all(len(v) == 1 and v[0] > 0 for v in result[series].values())
    with psycopg.connect(dsn) as conn:
        # it cleans up after itself in a shared database
        assert conn.execute("select to_regnamespace('bench')").fetchone() == (None,)
        left = conn.execute(
            "select count(*) from public.job_queue where job_type = 'bench_server'"
        ).fetchone()
    assert left == (0,)


def test_hostile_parse_bench_reports_every_case(tmp_path: Path) -> None:
    out = tmp_path / "hostile.json"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.hostile_parse"),
            *("--size-mb", "0.5", "--timeout", "1", "--json", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert results["parts_bomb"]["outcome"] == "too_many_parts"
    assert results["largest_ordinary"]["outcome"] == "parsed"
    assert set(results["split_boundary_bomb"]["peak_rss_mb"]) == {
        "worker",
        "largest_child",
        "all_processes",
    }


def test_fairness_bench_measures_the_quiet_store_alone_and_beside_a_backlog(
    dsn: str, tmp_path: Path
) -> None:
    out = tmp_path / "fairness.json"
    # Only this checkout's claim: the oldest-first comparison replaces the claim function for a
    # while, which a shared database must not see.
    done = run_bench("fairness.py", "--url", dsn, "--quick", "--claims", "fair", "--json", str(out))
    assert done.returncode == 0, done.stderr
    [phase] = json.loads(out.read_text())["phases"]
    assert phase["claim"] == "fair"
    assert len(phase["unloaded"]) == len(phase["loaded"]) == 3
    assert "beside backlog p50 s" in done.stdout
    with psycopg.connect(dsn) as conn:
        left = conn.execute(
            "select count(*) from public.job_queue"
            " where job_type = 'bench_fair' and status <> 'completed'"
        ).fetchone()
    assert left == (0,)


def test_fetch_bound_bench_drains_the_backlog_at_every_bound(
    database_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "fetch_bound.json"
    port = urlsplit(database_url).port or 5432
    # Its own database on the test cluster: the bench switches off every store but its own.
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.fetch_bound", "--quick"),
            *("--port", str(port), "--database", "bench_fetch_bound_smoke", "--json", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    # 30 messages at bounds 10 and 30: three jobs, then one; every message stored (asserted
    # inside the bench), and the table printed.
    assert [(r["bound"], r["jobs"]) for r in result["rows"]] == [(10, 3), (30, 1)]
    assert "quiet p50 s" in done.stdout
