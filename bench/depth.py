"""bench/depth: does the claim path stay flat as history grows, and does retention block it?

    .venv/bin/python bench/depth.py [--depths 0,100000,1000000] [--due 1000] [--rounds 5]
                                    [--connections 4] [--batch 10] [--quick] [--json F]

For each history depth: the table is emptied, filled with that many completed jobs (8 days old,
so retention may delete them) and their two events each (enqueued, completed), and vacuumed,
as autovacuum leaves a settled table. Then, --rounds
times, --due jobs (each with its own conversation) are enqueued and drained by --connections
threads through worker.db.Database (dequeue_jobs + complete_jobs); every claim-and-complete pair
is timed. Last, on the deepest table, purge_completed_jobs runs while claimers keep draining, and
the claim latency during the purge is compared with the latency before it.
"""

from __future__ import annotations

import script_path  # noqa: F401  (first: swaps bench/ for the repository root on sys.path)

# isort: split

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    DEFAULT_PGPORT,
    machine_summary,
    median,
    percentile,
    prepare_database,
    render_table,
    stopwatch,
    write_json,
)

DATABASE = "bench"
JOB_TYPE = "bench_depth"
LEASE_SECONDS = 300
FILL_CHUNK = 100_000
FLAT_TARGET = 1.5  # the deepest table's median latency may be at most this times the empty one's
QUICK = {"depths": "0,2000", "due": 200, "rounds": 2, "purge_batch": 500}
EMPTY_RETRY_SECONDS = 0.001


@dataclass
class DepthResult:
    """Latencies (ms per claim-and-complete call) and drain rates at one history depth."""

    depth: int
    latencies_ms: list[float] = field(default_factory=list)
    drain_rates: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Median and p99 latency, median drain rate."""
        return {
            "median_ms": median(self.latencies_ms),
            "p99_ms": percentile(self.latencies_ms, 0.99) if self.latencies_ms else 0.0,
            "drain_per_s": median(self.drain_rates),
        }


def fill_history(url: str, depth: int, shared: bool) -> None:
    """Empty the queue, then add `depth` completed jobs finished 8 days ago, vacuumed."""
    with psycopg.connect(url, autocommit=True) as conn:
        if shared:
            conn.execute("delete from public.job_queue where job_type = %s", (JOB_TYPE,))
        else:
            conn.execute("truncate public.job_queue, public.events")
        for first in range(0, depth, FILL_CHUNK):
            count = min(FILL_CHUNK, depth - first)
            conn.execute(
                "insert into public.job_queue (job_type, payload, status, conversation_id,"
                " attempt_count, locked_by, started_at, completed_at, next_retry_at, created_at,"
                " updated_at)"
                " select %s, jsonb_build_object('n', n), 'completed', gen_random_uuid(), 1,"
                " 'history', t, t, t, t, t"
                " from generate_series(1, %s::int) n,"
                " lateral (select now() - interval '8 days' - n * interval '1 ms' as t) x",
                (JOB_TYPE, count),
            )
        # A finished job comes with its audit trail (enqueued, completed), and every
        # transition inserts into the same events indexes, so the history carries it too.
        conn.execute(
            "insert into public.events (job_id, conversation_id, event_type, detail, created_at)"
            " select q.id, q.conversation_id, e.event_type, '{}', q.completed_at"
            " from public.job_queue q"
            " cross join (values ('job.enqueued'), ('job.completed'))"
            " as e (event_type)"
            " where q.job_type = %s and q.status = 'completed'",
            (JOB_TYPE,),
        )
        conn.execute("vacuum analyze public.job_queue")
        conn.execute("vacuum analyze public.events")


def enqueue_due(url: str, count: int) -> None:
    """`count` due jobs through public.enqueue_job, each with its own conversation."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("set role service_role")
        conn.execute(
            "select public.enqueue_job(%s, jsonb_build_object('n', n), null, null,"
            " gen_random_uuid()) from generate_series(1, %s::int) n",
            (JOB_TYPE, count),
        )


def drain(database: Any, connections: int, batch: int, due: int, latencies: list[float]) -> float:
    """Drain `due` jobs with `connections` threads; appends per-call ms; returns jobs/s."""
    total = [0]
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(connections + 1)

    def worker(i: int) -> None:
        worker_id = f"depth-{i}"
        try:
            start.wait()
            while True:
                began = time.perf_counter()
                rows = database.dequeue_jobs(
                    worker_id,
                    batch_size=batch,
                    lease_seconds=LEASE_SECONDS,
                    job_types=[JOB_TYPE],
                )
                done = database.complete_jobs(worker_id, [r["id"] for r in rows]) if rows else 0
                elapsed_ms = (time.perf_counter() - began) * 1000
                with lock:
                    if rows:
                        latencies.append(elapsed_ms)
                    total[0] += done
                    finished = total[0] >= due
                if finished:
                    return
                if not rows:
                    time.sleep(EMPTY_RETRY_SECONDS)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(connections)]
    for t in threads:
        t.start()
    start.wait()
    with stopwatch() as elapsed:
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    if total[0] != due:
        raise RuntimeError(f"drained {total[0]} jobs, expected {due}")
    return due / elapsed[0]


def measure_depth(
    url: str,
    database: Any,
    depth: int,
    due: int,
    rounds: int,
    connections: int,
    batch: int,
    shared: bool,
) -> DepthResult:
    """Fill to `depth`, then `rounds` x (enqueue `due`, drain)."""
    fill_history(url, depth, shared)
    result = DepthResult(depth)
    for _ in range(rounds):
        enqueue_due(url, due)
        result.drain_rates.append(drain(database, connections, batch, due, result.latencies_ms))
    return result


def measure_purge(
    url: str, database: Any, due: int, connections: int, batch: int, purge_batch: int
) -> dict[str, Any]:
    """Claim latency while purge_completed_jobs deletes the (8-day-old) history."""
    with psycopg.connect(url, autocommit=True) as conn:
        before_row = conn.execute(
            "select count(*) from public.job_queue where job_type = %s"
            " and status = 'completed' and completed_at < now() - interval '7 days'",
            (JOB_TYPE,),
        ).fetchone()
    before = int(before_row[0]) if before_row else 0
    purge_seconds = [0.0]
    purge_errors: list[BaseException] = []

    def purge() -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn, stopwatch() as elapsed:
                conn.execute("set role service_role")
                conn.execute(
                    "call public.purge_completed_jobs(interval '7 days', %s)", (purge_batch,)
                )
            purge_seconds[0] = elapsed[0]
        except BaseException as exc:  # surfaced below
            purge_errors.append(exc)

    during: list[float] = []
    rates: list[float] = []
    purger = threading.Thread(target=purge, daemon=True)
    purger.start()
    rounds_during = 0
    # Keep claiming for as long as the purge runs (at least one round).
    while purger.is_alive() or rounds_during == 0:
        enqueue_due(url, due)
        rates.append(drain(database, connections, batch, due, during))
        rounds_during += 1
    purger.join()
    if purge_errors:
        raise purge_errors[0]
    with psycopg.connect(url, autocommit=True) as conn:
        after_row = conn.execute(
            "select count(*) from public.job_queue where job_type = %s"
            " and status = 'completed' and completed_at < now() - interval '7 days'",
            (JOB_TYPE,),
        ).fetchone()
    return {
        "history_before": before,
        "old_history_after": int(after_row[0]) if after_row else -1,
        "purge_seconds": purge_seconds[0],
        "purge_batch": purge_batch,
        "rounds_during": rounds_during,
        "median_ms": median(during),
        "p99_ms": percentile(during, 0.99) if during else 0.0,
        "drain_per_s": median(rates),
    }


def main(argv: list[str] | None = None) -> int:
    """Run every depth, then the purge, and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="0,100000,1000000")
    parser.add_argument("--due", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--purge-batch", type=int, default=5000)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PGPORT", DEFAULT_PGPORT)))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--url", help="an already prepared database (default: scripts/local-db)")
    parser.add_argument(
        "--shared-database",
        action="store_true",
        help="with --url: delete only this benchmark's jobs, never truncate",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.depths, args.due, args.rounds = QUICK["depths"], QUICK["due"], QUICK["rounds"]
        args.purge_batch = QUICK["purge_batch"]
    depths = [int(d) for d in args.depths.split(",")]
    url = args.url or prepare_database(args.port, DATABASE)

    from worker.db import Database
    from worker.db.pg import PgTransport

    transport = PgTransport(
        url, min_size=args.connections, max_size=args.connections, timeout_seconds=60
    )
    with Database(transport) as database:
        results = []
        for depth in depths:
            result = measure_depth(
                url,
                database,
                depth,
                args.due,
                args.rounds,
                args.connections,
                args.batch,
                args.shared_database,
            )
            results.append(result)
            s = result.summary()
            print(
                f"depth {depth:>9}: median {s['median_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms,"
                f" drain {s['drain_per_s']:.0f} jobs/s",
                file=sys.stderr,
            )
        purge = measure_purge(
            url, database, args.due, args.connections, args.batch, args.purge_batch
        )

    base = results[0].summary()
    summary = machine_summary(url)
    print(
        f"bench/depth: {args.due} due jobs x {args.rounds} rounds per depth, "
        f"{args.connections} connections, batch {args.batch}; {summary['cpus']} CPUs, "
        f"{summary['postgres']}, {summary['date']}"
    )
    rows = []
    for r in results:
        s = r.summary()
        ratio = s["median_ms"] / base["median_ms"] if base["median_ms"] else 0.0
        rows.append(
            [
                f"{r.depth:,}",
                f"{s['median_ms']:.2f}",
                f"{s['p99_ms']:.2f}",
                f"{s['drain_per_s']:.0f}",
                f"{ratio:.2f}x",
            ]
        )
    deepest = results[-1].summary()
    purge_ratio = purge["median_ms"] / deepest["median_ms"] if deepest["median_ms"] else 0.0
    rows.append(
        [
            f"during purge of {purge['history_before']:,}",
            f"{purge['median_ms']:.2f}",
            f"{purge['p99_ms']:.2f}",
            f"{purge['drain_per_s']:.0f}",
            f"{purge_ratio:.2f}x of deepest",
        ]
    )
    print(
        render_table(
            [
                "finished jobs",
                "claim+complete median ms",
                "p99 ms",
                "drain jobs/s",
                "median vs empty",
            ],
            rows,
        )
    )
    flat = max(r.summary()["median_ms"] for r in results) / base["median_ms"]
    print(
        f"flatness: worst median / empty median = {flat:.2f}x (target <= {FLAT_TARGET}x); "
        f"purge: {purge['history_before']:,} completed rows in {purge['purge_seconds']:.1f} s "
        f"(batches of {purge['purge_batch']}), {purge['old_history_after']} old rows left, "
        f"{purge['rounds_during']} drain rounds ran meanwhile"
    )
    if args.json:
        write_json(
            args.json,
            {
                "depths": [{**r.summary(), "depth": r.depth} for r in results],
                "purge": purge,
                "machine": summary,
                "flatness": flat,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
