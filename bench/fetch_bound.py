"""bench/fetch_bound: how many messages one fetch job should read (FETCH_MAX_PER_STORE).

    .venv/bin/python -m bench.fetch_bound [--backlog 600] [--quiet 12] [--runs 3]
                                          [--bounds 25,50,100,200,600] [--concurrency 2]
                                          [--quick] [--json F]

Each run, for each bound (bounds interleaved run by run, so a noisy neighbour hits all alike),
on fresh stores in one Dovecot: one store with --backlog new messages and --quiet stores with
one message each; then one fetch run (worker.fetch_jobs.run_fetch, the code /fetch-emails runs)
with FETCH_CONCURRENCY = --concurrency mailbox slots. A job reads at most the bound; the backlog
store gets follow-up jobs until drained. Reported (medians of --runs): the backlog's drain time
and number of jobs, the quiet stores' mail stored after the run started (p50 and max: do they
wait behind the backlog?), and the cost of one more job, fitted from the drain times: what a
smaller bound pays per job (IMAP login and SELECT, the claim, the finish) against what a larger
one holds in memory (up to the bound's messages at once, each up to MAX_MESSAGE_BYTES).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from bench.common import (
    DEFAULT_PGPORT,
    machine_summary,
    median,
    percentile,
    prepare_database,
    render_table,
    write_json,
)
from worker import fetch, fetch_jobs
from worker.db import Database
from worker.db.pg import PgTransport
from worker.devstack.dovecot import DovecotServer
from worker.devstack.tls import create_test_ca
from worker.runs import Budget

DATABASE = "bench_fetch_bound"
PASSWORD = "imap-bench-password"  # throwaway, loopback only
BUDGET_SECONDS = 600.0  # one fetch run; never reached
QUICK = {"backlog": 30, "quiet": 3, "bounds": "10,30", "runs": 1}


@dataclass
class Sample:
    bound: int
    drain_seconds: float
    jobs: int
    quiet_p50_seconds: float
    quiet_max_seconds: float


def message(n: int, tag: str) -> bytes:
    return (
        f"From: Customer {n} <customer{n}@example.com>\r\nTo: support@shop.test\r\n"
        f"Subject: Question {n}\r\nMessage-ID: <{tag}.{n}@bench.example>\r\n"
        f"Date: Tue, 01 Dec 2026 12:00:00 +0000\r\n\r\n"
        f"Hello, where is my order #{1000 + n}? Thanks.\r\n"
    ).encode()


def add_store(db: Database, dovecot: DovecotServer, tag: str) -> tuple[str, str]:
    user = f"{tag}@shop.test"
    dovecot.add_user(user, PASSWORD)
    store_id = db.admin_create_store(
        {
            "name": tag,
            "support_email": user,
            "imap_host": dovecot.host,
            "imap_port": dovecot.imaps_port,
            "imap_user": user,
            "imap_tls": "ssl",
            "smtp_host": "127.0.0.1",
            "smtp_port": 9,
            "smtp_user": user,
            "smtp_tls": "plain",
        },
        {"imap_password": PASSWORD, "smtp_password": "unused"},
    )
    return store_id, user


def one_run(
    db: Database,
    sql: psycopg.Connection[dict[str, Any]],
    dovecot: DovecotServer,
    ca_file: str,
    bound: int,
    args: argparse.Namespace,
) -> Sample:
    tag = f"b{bound}-{uuid.uuid4().hex[:8]}"
    backlog, backlog_user = add_store(db, dovecot, f"{tag}-big")
    quiet = [add_store(db, dovecot, f"{tag}-q{n}") for n in range(args.quiet)]
    dovecot.deliver(backlog_user, [message(n, f"{tag}-big") for n in range(1, args.backlog + 1)])
    for n, (_, user) in enumerate(quiet):
        dovecot.deliver(user, [message(1, f"{tag}-q{n}")])
    stores = [backlog] + [store_id for store_id, _ in quiet]
    # Only this run's stores are fetched: the earlier runs' are switched off.
    sql.execute("update public.stores set active = (id = any(%s::uuid[]))", (stores,))
    options = fetch.FetchOptions(
        concurrency=args.concurrency,
        max_per_store=bound,
        store_timeout_seconds=BUDGET_SECONDS,
        ca_file=ca_file,
    )
    started = sql.execute("select clock_timestamp() as t").fetchone()["t"]  # type: ignore[index]
    summary = fetch_jobs.run_fetch(db, Budget(BUDGET_SECONDS), options=options)
    assert summary["stored"] == args.backlog + args.quiet, summary
    times = sql.execute(
        "select store_id, extract(epoch from max(received_at) - %s) as s"
        " from public.messages where store_id = any(%s::uuid[]) group by store_id",
        (started, stores),
    ).fetchall()
    seconds = {str(r["store_id"]): float(r["s"]) for r in times}
    jobs = sql.execute(
        "select count(*) as n from public.job_queue"
        " where store_id = %s and job_type = 'fetch_mailbox'",
        (backlog,),
    ).fetchone()
    quiet_seconds = [seconds[store_id] for store_id, _ in quiet]
    return Sample(
        bound=bound,
        drain_seconds=round(seconds[backlog], 3),
        jobs=int(jobs["n"]) if jobs else 0,
        quiet_p50_seconds=round(percentile(quiet_seconds, 0.5), 3),
        quiet_max_seconds=round(max(quiet_seconds), 3),
    )


def per_job_cost(rows: list[dict[str, Any]]) -> float | None:
    """Seconds one more job costs: the drain-time slope over jobs (least squares)."""
    points = [(float(r["jobs"]), float(r["drain_s"])) for r in rows]
    if len({x for x, _ in points}) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    num = sum((x - mean_x) * (y - mean_y) for x, y in points)
    den = sum((x - mean_x) ** 2 for x, _ in points)
    return num / den


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=600)
    parser.add_argument("--quiet", type=int, default=12)
    parser.add_argument("--bounds", default="25,50,100,200,600")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a tiny run (the smoke test's)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PGPORT", DEFAULT_PGPORT)))
    parser.add_argument("--database", default=DATABASE, help="recreated on --port")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    bounds = [int(b) for b in str(args.bounds).split(",")]

    url = prepare_database(args.port, args.database)
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory() as tmp:
        ca = create_test_ca(Path(tmp))
        with (
            DovecotServer(ca) as dovecot,
            Database(PgTransport(url)) as db,
            psycopg.connect(url, autocommit=True, row_factory=dict_row) as sql,
        ):
            # Not counted: starts the parse pool's fork server and warms the connections.
            one_run(db, sql, dovecot, str(ca.ca_file), bounds[0], args)
            for _ in range(args.runs):
                for bound in bounds:
                    samples.append(one_run(db, sql, dovecot, str(ca.ca_file), bound, args))

    rows = []
    for bound in bounds:
        mine = [s for s in samples if s.bound == bound]
        rows.append(
            {
                "bound": bound,
                "jobs": round(median([s.jobs for s in mine])),
                "drain_s": round(median([s.drain_seconds for s in mine]), 2),
                "msgs_per_s": round(args.backlog / max(median([s.drain_seconds for s in mine]),
                                                       1e-9)),
                "quiet_p50_s": round(median([s.quiet_p50_seconds for s in mine]), 2),
                "quiet_max_s": round(median([s.quiet_max_seconds for s in mine]), 2),
            }
        )
    slope = per_job_cost(rows)
    print(
        f"\nfetch bound: {args.backlog}-message backlog beside {args.quiet} one-message stores,"
        f" {args.concurrency} mailbox slots, medians of {args.runs} run(s)\n"
    )
    print(
        render_table(
            ["bound", "jobs", "drain s", "msgs/s", "quiet p50 s", "quiet max s"],
            [list(r.values()) for r in rows],
        )
    )
    if slope is not None:
        print(f"\none more job costs {slope * 1000:.0f} ms (drain time over jobs, least squares)")
    if args.json:
        write_json(
            args.json,
            {
                "machine": machine_summary(url),
                "args": vars(args) | {"json": str(args.json)},
                "rows": rows,
                "per_job_seconds": slope,
                "samples": [asdict(s) for s in samples],
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )


if __name__ == "__main__":
    main()
