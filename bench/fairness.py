"""bench/fairness: one store's backlog beside a quiet store (issue 16 item 4), in seconds.

    .venv/bin/python bench/fairness.py [--backlog 2000] [--quiet 10] [--quiet-every 3]
                                       [--slots 64] [--work 1.8] [--claims fair,oldest]
                                       [--quick] [--json F]

The worker's own runner (worker.queue.runner.run_queue, re-run as soon as it drains, as the
process-queue trigger would) claims through dequeue_jobs; each job "works" for --work seconds
(Claude 1.5 s + Shopify 0.3 s, as in bench/pipeline). First the quiet store alone: --quiet jobs,
one every --quiet-every seconds (its unloaded arrival-to-reply). Then the same quiet jobs while
a --backlog of the busy store's jobs, enqueued at once just before, drains. Arrival-to-reply is
the job's created_at (its enqueue) to completed_at, both server clocks.

Claims compared: `fair` is this checkout's dequeue_jobs; `oldest` is the oldest-first claim it
replaced (the function as of commit OLDEST_FIRST_COMMIT, loaded over it for that run), so both
run on the same server in one invocation.
"""

from __future__ import annotations

import script_path  # noqa: F401  (first: swaps bench/ for the repository root on sys.path)

# isort: split

import argparse
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench.common import (
    DEFAULT_PGPORT,
    ROOT,
    machine_summary,
    median,
    percentile,
    prepare_database,
    render_table,
    write_json,
)

DATABASE = "bench_fairness"
JOB_TYPE = "bench_fair"
# The last commit whose dequeue_jobs claimed oldest first across all stores.
OLDEST_FIRST_COMMIT = "daff67e"
CLAIM_MIGRATION = "supabase/migrations/20261129000400_queue_enqueue_claim.sql"
IDLE_POLL_SECONDS = 0.05  # between runs when the queue is empty (the trigger, only faster)
QUICK = {"backlog": 60, "quiet": 3, "quiet_every": 0.3, "slots": 8, "work": 0.05}


@dataclass
class Phase:
    """One claim's measurement: the quiet store's latencies unloaded and beside the backlog."""

    claim: str
    unloaded: list[float]
    loaded: list[float]
    backlog_seconds: float


class Work:
    """Stands in for the email pipeline's external calls: waits, then completes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def handle(self, run: Any) -> Any:
        from worker.queue.outcome import Complete

        time.sleep(self.seconds)
        return Complete({"outcome": "done"})

    def dead_lettered(self, job: Mapping[str, Any]) -> None:
        raise RuntimeError(f"bench job dead-lettered: {job['id']}")


def load_claim(url: str, claim: str) -> None:
    """Install the claim function to measure: this checkout's, or the oldest-first one."""
    if claim == "fair":
        sql = (ROOT / CLAIM_MIGRATION).read_text()
    else:
        sql = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{OLDEST_FIRST_COMMIT}:{CLAIM_MIGRATION}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]  # a migration file, run as it is applied


def enqueue(conn: psycopg.Connection[Any], store: uuid.UUID, count: int, tag: str) -> None:
    jobs = [
        {
            "job_type": JOB_TYPE,
            "store_id": str(store),
            "conversation_id": str(uuid.uuid4()),
            "payload": {"tag": tag},
        }
        for _ in range(count)
    ]
    for start in range(0, len(jobs), 1000):
        conn.execute("select public.enqueue_jobs(%s)", (Jsonb(jobs[start : start + 1000]),))


def latencies(conn: psycopg.Connection[Any], tag: str) -> list[float]:
    rows = conn.execute(
        "select extract(epoch from completed_at - created_at)::float8 from public.job_queue"
        " where job_type = %s and payload ->> 'tag' = %s and status = 'completed'",
        (JOB_TYPE, tag),
    ).fetchall()
    return [row[0] for row in rows]


def pending(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "select count(*) from public.job_queue where job_type = %s and status <> 'completed'",
        (JOB_TYPE,),
    ).fetchone()
    return int(row[0]) if row else 0


def worker_loop(url: str, slots: int, work: float, stop: threading.Event) -> None:
    """The worker: one run after another until stopped (a run ends when it finds no work)."""
    from worker.db import Database
    from worker.db.pg import PgTransport
    from worker.queue.handlers import Handlers
    from worker.queue.runner import RunnerOptions, run_queue
    from worker.runs import Budget

    handlers = Handlers()
    handlers.register(JOB_TYPE, Work(work))
    transport = PgTransport(url, max_size=min(slots + 2, 32), timeout_seconds=60)
    with Database(transport) as db:
        while not stop.is_set():
            summary = run_queue(
                db, handlers, Budget(3600, stop_event=stop), options=RunnerOptions(slots, 600)
            )
            if not summary["claimed"]:
                stop.wait(IDLE_POLL_SECONDS)


def quiet_arrivals(
    conn: psycopg.Connection[Any], store: uuid.UUID, count: int, every: float, tag: str
) -> None:
    for i in range(count):
        if i:
            time.sleep(every)
        enqueue(conn, store, 1, tag)


def measure(url: str, claim: str, args: argparse.Namespace) -> Phase:
    load_claim(url, claim)
    quiet, busy = uuid.uuid4(), uuid.uuid4()
    stop = threading.Event()
    worker = threading.Thread(target=worker_loop, args=(url, args.slots, args.work, stop))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("set role service_role")
        conn.execute("delete from public.job_queue where job_type = %s", (JOB_TYPE,))
        worker.start()
        try:
            quiet_arrivals(conn, quiet, args.quiet, args.quiet_every, f"{claim}-unloaded")
            while pending(conn):
                time.sleep(0.1)
            began = time.monotonic()
            enqueue(conn, busy, args.backlog, f"{claim}-backlog")
            time.sleep(min(1.0, args.quiet_every))  # the backlog holds every slot by now
            quiet_arrivals(conn, quiet, args.quiet, args.quiet_every, f"{claim}-loaded")
            while pending(conn):
                time.sleep(0.1)
            backlog_seconds = time.monotonic() - began
        finally:
            stop.set()
            worker.join()
        return Phase(
            claim=claim,
            unloaded=latencies(conn, f"{claim}-unloaded"),
            loaded=latencies(conn, f"{claim}-loaded"),
            backlog_seconds=backlog_seconds,
        )


def table(phases: list[Phase], args: argparse.Namespace) -> str:
    rows = []
    for p in phases:
        rows.append(
            [
                "fair (this checkout)" if p.claim == "fair" else "oldest first (before)",
                f"{median(p.unloaded):.2f}",
                f"{median(p.loaded):.2f}",
                f"{percentile(p.loaded, 0.95):.2f}",
                f"{max(p.loaded):.2f}",
                f"{median(p.loaded) - median(p.unloaded):+.2f}",
                f"{p.backlog_seconds:.1f}",
            ]
        )
    title = (
        f"quiet store: {args.quiet} jobs, one every {args.quiet_every} s; busy store: "
        f"{args.backlog} jobs at once; {args.slots} slots, {args.work} s per job"
    )
    return (
        title
        + "\n"
        + render_table(
            [
                "claim",
                "unloaded p50 s",
                "beside backlog p50 s",
                "p95 s",
                "max s",
                "p50 vs unloaded",
                "backlog drained s",
            ],
            rows,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backlog", type=int, default=2000)
    parser.add_argument("--quiet", type=int, default=10)
    parser.add_argument("--quiet-every", type=float, default=3.0)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--work", type=float, default=1.8)
    parser.add_argument("--claims", default="fair,oldest")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PGPORT", DEFAULT_PGPORT)))
    parser.add_argument("--url", help="an already prepared database (default: scripts/local-db)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    url = args.url or prepare_database(args.port, DATABASE)
    phases = []
    try:
        for claim in args.claims.split(","):
            phases.append(measure(url, claim.strip(), args))
            print(f"{claim}: done", file=sys.stderr, flush=True)
    finally:
        load_claim(url, "fair")  # a shared --url database keeps this checkout's claim
    machine = machine_summary(url)
    print(" ".join(f"{k}={v}" for k, v in machine.items()))
    print(table(phases, args))
    if args.json:
        payload = {"machine": machine, "args": {**vars(args), "json": str(args.json)}}
        write_json(args.json, {**payload, "phases": [asdict(p) for p in phases]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
