"""bench/claim_statements: where a drained job's server time and WAL go, statement by statement.

    .venv/bin/python bench/claim_statements.py [--jobs 20000] [--batch 50] [--port P]

bench/server_cost's claim-and-acknowledge loop (inside Postgres, one session, a commit after
every call, synchronous_commit off) for the floor and for ours, with pg_stat_statements tracking
nested statements (track = all): per statement, the executions, server microseconds, WAL bytes,
buffers dirtied and rows per drained job. The statements of dequeue_jobs and complete_jobs are
the lines of the claim and of the acknowledgement; the sum is what one job costs the server.
It loads pg_stat_statements into the cluster (a restart, once) and runs the loop as the platform
superuser (track = all is a superuser setting), so run it on a cluster of your own, never on a
shared test cluster.
"""

from __future__ import annotations

import script_path  # noqa: F401  (first: swaps bench/ for the repository root on sys.path)

# isort: split

import argparse
import os
import shlex
import subprocess
import sys
from urllib.parse import urlsplit

import psycopg

from bench import pipeline, server_cost
from bench.common import DEFAULT_PGPORT, prepare_database, render_table

TOP = 14  # statements shown per contender


def admin_session(port: int, database: str, *statements: str) -> str:
    """Run statements in one psql session as the platform superuser; returns the last output."""
    command = " ".join(
        [f"psql -X -q -p {port} -U supabase_admin -d {shlex.quote(database)} -At -F '\t'"]
        + [f"-c {shlex.quote(s)}" for s in statements]
    )
    return subprocess.run(
        ["su", "postgres", "-c", command], check=True, capture_output=True, text=True
    ).stdout


def measure(
    port: int, database: str, url: str, kind: str, jobs: int, batch: int
) -> list[list[str]]:
    """Drain `jobs` jobs of `kind` in one session; the statements' cost per job, most first."""
    server_cost.fill(url, kind, jobs)
    call = (
        f"call bench.drain_floor('{kind}', {batch})"
        if kind == "floor"
        else f"call bench.drain_ours('{kind}', {batch}, '{server_cost.JOB_TYPE}')"
    )
    out = admin_session(
        port,
        database,
        "select pg_stat_statements_reset()",
        "set pg_stat_statements.track = 'all'",
        "set synchronous_commit = off",
        call,
        "set pg_stat_statements.track = 'top'",
        # the CALL (the whole drain) and every statement inside it
        "select regexp_replace(left(query, 90), '\\s+', ' ', 'g'), calls, total_exec_time,"
        " wal_bytes, shared_blks_dirtied, rows"
        " from pg_stat_statements where dbid ="
        " (select oid from pg_database where datname = current_database())"
        " and (not toplevel or query ilike 'call bench.%%')"
        " order by total_exec_time desc",
    )
    if server_cost.left_over(url, kind):
        raise RuntimeError(f"{kind}: jobs left after the drain")
    rows = [line.split("\t") for line in out.splitlines() if line.count("\t") == 5]
    table = []
    total_us = total_wal = total_dirtied = 0.0
    for query, calls, ms, wal, dirtied, nrows in rows:
        us = float(ms) * 1000 / jobs
        total_us += us
        total_wal += float(wal) / jobs
        total_dirtied += float(dirtied) / jobs
        table.append(
            [
                query[:90],
                f"{int(calls) / jobs:.3f}",
                f"{us:.2f}",
                f"{float(wal) / jobs:.0f}",
                f"{float(dirtied) / jobs:.2f}",
                f"{int(nrows) / jobs:.2f}",
            ]
        )
    # A statement inside a function is counted alone and again within the function's line (and
    # every line within the CALL's), so the lines do not add up: read each against the CALL.
    shown = table[:TOP]
    return shown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PGPORT", DEFAULT_PGPORT)))
    args = parser.parse_args(argv)
    url = prepare_database(args.port, server_cost.DATABASE)
    database = urlsplit(url).path.lstrip("/")
    pipeline.enable_pg_stat_statements(url, args.port)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(server_cost.PROCEDURES)
    headers = ["statement", "calls/job", "us/job", "WAL B/job", "dirtied/job", "rows/job"]
    try:
        for kind, name in (("floor", "floor (bare SQL)"), ("ours", "ours")):
            print(f"\n{name}: {args.jobs} jobs, batch {args.batch}")
            print(
                render_table(
                    headers, measure(args.port, database, url, kind, args.jobs, args.batch)
                )
            )
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("drop schema bench cascade")
            conn.execute(
                "delete from public.job_queue where job_type = %s", (server_cost.JOB_TYPE,)
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
