"""bench/queue: drain N pre-enqueued no-op jobs through our queue and the ones users would pick.

    .venv/bin/python bench/queue.py [--jobs 20000] [--runs 3] [--connections 4] [--batch 50]
                                    [--only ours,rest,pgqueuer,procrastinate,floor] [--json F]

Contenders, all on the same Postgres (scripts/local-db on PGPORT, default 5449), each in its own
database, reset before every run:
  ours-psycopg  worker.db.Database over the psycopg pool: dequeue_jobs + complete_jobs per batch,
                one thread per connection; conversation exclusivity and leases on (every job has
                its own conversation id), events written for every transition
  ours-rest     the same through supabase-py and the PostgREST-compatible test gateway
  pgqueuer      asyncpg and psycopg drivers, batch 10 (its benchmark's default) and --batch
  procrastinate its worker with concurrency = --connections
  floor         bare SQL: FOR UPDATE SKIP LOCKED claim of a batch + one batch update
pgqueuer and procrastinate run in bench/.venv (created here with pip, never the project's venv);
this file re-executes itself there with --child.
Enqueue is set-based everywhere (one statement or library call per 1,000 jobs).
"""

from __future__ import annotations

import script_path  # noqa: F401  (first: swaps bench/ for the repository root on sys.path)

# isort: split

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    DEFAULT_PGPORT,
    ROOT,
    Measurement,
    machine_summary,
    prepare_database,
    recreate_database,
    render_table,
    stopwatch,
    write_json,
)

BENCH_VENV = ROOT / "bench" / ".venv"
# Pinned so reruns compare the same code; bump deliberately.
CONTENDER_PACKAGES = (
    "pgqueuer==1.6.0",
    "procrastinate==3.10.0",
    "asyncpg==0.32.0",
    "psycopg[binary]==3.3.9",
)
DATABASE = "bench"  # prepared by scripts/local-db; holds our schema
JOB_TYPE = "bench_noop"
ENQUEUE_CHUNK = 1000
LEASE_SECONDS = 300
PGQUEUER_DOCUMENTED_BATCH = 10
EMPTY_RETRY_SECONDS = 0.001  # a claimer that found nothing while peers still hold jobs waits
# --shared-database: others use the database too (the smoke test), so delete only our jobs
SHARED_DATABASE = [False]


# -- drain loops shared by our rows and the floor ------------------------------------------------


def drain_with_threads(
    connections: int, jobs: int, claim_and_complete: Callable[[int], int]
) -> float:
    """Run claim_and_complete(worker_index) in `connections` threads until `jobs` are done.

    claim_and_complete handles one batch and returns how many jobs it completed (0: none due).
    Returns the elapsed seconds; raises if the total is not exactly `jobs`.
    """
    done = [0] * connections
    lock = threading.Lock()
    total = [0]
    errors: list[BaseException] = []
    start = threading.Barrier(connections + 1)

    def worker(i: int) -> None:
        try:
            start.wait()
            while True:
                n = claim_and_complete(i)
                done[i] += n
                with lock:
                    total[0] += n
                    finished = total[0] >= jobs
                if finished:
                    return
                if n == 0:
                    # empty only because peers hold the rest at this instant
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
    if sum(done) != jobs:
        raise RuntimeError(f"drained {sum(done)} jobs, expected {jobs}")
    return elapsed[0]


def enqueue_ours(url: str, jobs: int) -> float:
    """Batches of public.enqueue_jobs, each job with its own conversation."""
    with psycopg.connect(url, autocommit=True) as conn, stopwatch() as elapsed:
        conn.execute("set role service_role")
        for first in range(0, jobs, ENQUEUE_CHUNK):
            count = min(ENQUEUE_CHUNK, jobs - first)
            conn.execute(
                "select public.enqueue_jobs((select jsonb_agg(jsonb_build_object("
                "'job_type', %s::text, 'payload', jsonb_build_object('n', n),"
                " 'conversation_id', gen_random_uuid()))"
                " from generate_series(%s::int, %s::int) n))",
                (JOB_TYPE, first, first + count - 1),
            )
    return elapsed[0]


def reset_ours(url: str, shared: bool) -> None:
    """Empty the queue so every run starts from the same state (in a shared database: our jobs)."""
    with psycopg.connect(url, autocommit=True) as conn:
        if shared:
            conn.execute("delete from public.job_queue where job_type = %s", (JOB_TYPE,))
        else:
            conn.execute("truncate public.job_queue, public.events")
        conn.execute("vacuum analyze public.job_queue")


def run_ours(
    url: str, jobs: int, connections: int, batch: int, database: Any
) -> tuple[float, float]:
    """Our worker path: Database.dequeue_jobs + complete_jobs, one thread per connection."""
    reset_ours(url, SHARED_DATABASE[0])
    enqueue_seconds = enqueue_ours(url, jobs)

    def step(i: int) -> int:
        worker_id = f"bench-{i}"
        rows = database.dequeue_jobs(
            worker_id, batch_size=batch, lease_seconds=LEASE_SECONDS, job_types=[JOB_TYPE]
        )
        if not rows:
            return 0
        completed = database.complete_jobs(worker_id, [r["id"] for r in rows])
        if completed != len(rows):
            raise RuntimeError(f"complete_jobs completed {completed} of {len(rows)}")
        return int(completed)

    drain_seconds = drain_with_threads(connections, jobs, step)
    with psycopg.connect(url) as conn:
        left = conn.execute(
            "select count(*) from public.job_queue where job_type = %s and status <> 'completed'",
            (JOB_TYPE,),
        ).fetchone()
    if left != (0,):
        raise RuntimeError(f"{left} jobs not completed")
    return enqueue_seconds, drain_seconds


def run_ours_psycopg(url: str, jobs: int, connections: int, batch: int) -> tuple[float, float]:
    """ours-psycopg row."""
    from worker.db import Database
    from worker.db.pg import PgTransport

    transport = PgTransport(url, min_size=connections, max_size=connections, timeout_seconds=30)
    with Database(transport) as database:
        return run_ours(url, jobs, connections, batch, database)


def run_ours_rest(url: str, jobs: int, connections: int, batch: int) -> tuple[float, float]:
    """ours-rest row: supabase-py through the PostgREST-compatible test gateway."""
    from worker.db import Database
    from worker.db.rest import RestTransport
    from worker.devstack.gateway import RpcGateway, authenticator_url

    gateway = RpcGateway(authenticator_url(url))
    try:
        transport = RestTransport(
            gateway.url,
            gateway.make_jwt("service_role"),
            timeout_seconds=30,
            max_connections=connections,
        )
        with Database(transport) as database:
            return run_ours(url, jobs, connections, batch, database)
    finally:
        gateway.close()


# -- the floor -------------------------------------------------------------------------------------

FLOOR_SCHEMA = """
create table floor_jobs (
    id bigint generated always as identity primary key,
    status text not null default 'pending',
    payload jsonb not null,
    locked_by text,
    locked_until timestamptz,
    created_at timestamptz not null default now()
);
create index floor_jobs_pending_idx on floor_jobs (id) where status = 'pending';
"""
FLOOR_CLAIM = """
update floor_jobs j
set status = 'processing', locked_by = %s, locked_until = now() + interval '300 seconds'
from (select id from floor_jobs where status = 'pending' order by id limit %s
      for update skip locked) c
where j.id = c.id
returning j.id
"""
FLOOR_COMPLETE = (
    "update floor_jobs set status = 'completed', locked_until = null"
    " where id = any(%s) and locked_by = %s"
)


def run_floor(url: str, jobs: int, connections: int, batch: int) -> tuple[float, float]:
    """Bare SQL: what any SKIP LOCKED queue costs at least on this server."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("drop table if exists floor_jobs")
        conn.execute(FLOOR_SCHEMA)
        with stopwatch() as enqueue:
            for first in range(0, jobs, ENQUEUE_CHUNK):
                count = min(ENQUEUE_CHUNK, jobs - first)
                conn.execute(
                    "insert into floor_jobs (payload) select jsonb_build_object('n', n)"
                    " from generate_series(%s::int, %s::int) n",
                    (first, first + count - 1),
                )
        conn.execute("analyze floor_jobs")
    conns = [psycopg.connect(url, autocommit=True) for _ in range(connections)]
    try:

        def step(i: int) -> int:
            worker_id = f"floor-{i}"
            ids = [r[0] for r in conns[i].execute(FLOOR_CLAIM, (worker_id, batch)).fetchall()]
            if ids:
                conns[i].execute(FLOOR_COMPLETE, (ids, worker_id))
            return len(ids)

        drain_seconds = drain_with_threads(connections, jobs, step)
    finally:
        for c in conns:
            c.close()
    return enqueue[0], drain_seconds


# -- contenders in bench/.venv -------------------------------------------------------------------


async def child_pgqueuer(
    url: str, jobs: int, connections: int, batch: int, driver: str
) -> dict[str, float]:
    """pgqueuer's own drain strategy: one PgQueuer per connection, mode=drain."""
    from pgqueuer import PgQueuer, types
    from pgqueuer.db import AsyncpgDriver, PsycopgDriver
    from pgqueuer.queries import Queries

    async def connect() -> Any:
        if driver == "asyncpg":
            import asyncpg

            return AsyncpgDriver(await asyncpg.connect(dsn=url))
        return PsycopgDriver(await psycopg.AsyncConnection.connect(url, autocommit=True))

    queries = Queries(await connect())
    await queries.install()
    began = time.perf_counter()
    for first in range(0, jobs, ENQUEUE_CHUNK):
        count = min(ENQUEUE_CHUNK, jobs - first)
        await queries.enqueue(
            ["noop"] * count, [str(first + k).encode() for k in range(count)], [0] * count
        )
    enqueue_seconds = time.perf_counter() - began

    handled = [0]
    managers = [PgQueuer(await connect()) for _ in range(connections)]
    for manager in managers:

        @manager.entrypoint("noop")
        async def noop(job: Any) -> None:
            handled[0] += 1

    began = time.perf_counter()
    await asyncio.gather(
        *(m.run(batch_size=batch, mode=types.QueueExecutionMode.drain) for m in managers)
    )
    drain_seconds = time.perf_counter() - began
    return {"enqueue": enqueue_seconds, "drain": drain_seconds, "handled": handled[0]}


async def child_procrastinate(url: str, jobs: int, connections: int) -> dict[str, float]:
    """procrastinate's worker with concurrency = connections, exiting when the queue is empty."""
    import procrastinate

    handled = [0]
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=url, min_size=connections + 1, max_size=connections + 1
        )
    )

    @app.task(name="noop", queue="bench")
    async def noop(n: int) -> None:
        handled[0] += 1

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        began = time.perf_counter()
        for first in range(0, jobs, ENQUEUE_CHUNK):
            count = min(ENQUEUE_CHUNK, jobs - first)
            await noop.batch_defer_async(*({"n": first + k} for k in range(count)))
        enqueue_seconds = time.perf_counter() - began
        began = time.perf_counter()
        await app.run_worker_async(
            queues=["bench"], concurrency=connections, wait=False, install_signal_handlers=False
        )
        drain_seconds = time.perf_counter() - began
    return {"enqueue": enqueue_seconds, "drain": drain_seconds, "handled": handled[0]}


def ensure_bench_venv() -> Path:
    """bench/.venv with the contenders, created with pip on first use."""
    python = BENCH_VENV / "bin" / "python"
    probe = [str(python), "-c", "import pgqueuer, procrastinate, asyncpg, psycopg"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print("creating bench/.venv with " + " ".join(CONTENDER_PACKAGES), file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *CONTENDER_PACKAGES], check=True)
    return python


def run_child(
    python: Path, kind: str, url: str, jobs: int, connections: int, batch: int
) -> tuple[float, float]:
    """Run one contender in bench/.venv and read its JSON answer."""
    out = subprocess.run(
        [
            str(python),
            str(Path(__file__).resolve()),
            "--child",
            kind,
            "--url",
            url,
            "--jobs",
            str(jobs),
            "--connections",
            str(connections),
            "--batch",
            str(batch),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if int(result["handled"]) != jobs:
        raise RuntimeError(f"{kind} handled {result['handled']} jobs, expected {jobs}")
    return float(result["enqueue"]), float(result["drain"])


# -- orchestration -------------------------------------------------------------------------------


Runner = Callable[[int], tuple[float, float]]


def contenders(args: argparse.Namespace) -> list[tuple[str, str, Runner]]:
    """(name, settings, run) for every selected row; run(run_index) -> (enqueue s, drain s)."""
    only = set(args.only.split(","))
    base_url = args.url
    c, b, n = args.connections, args.batch, args.jobs
    rows: list[tuple[str, str, Callable[[int], tuple[float, float]]]] = []
    common = f"{c} conn, batch {b}"
    if "ours" in only:
        rows.append(("ours-psycopg", common, lambda _r: run_ours_psycopg(base_url, n, c, b)))
    if "rest" in only:
        rows.append(
            ("ours-rest", common + ", via gateway", lambda _r: run_ours_rest(base_url, n, c, b))
        )
    python = ensure_bench_venv() if only & {"pgqueuer", "procrastinate"} else None

    def scratch(kind: str, batch: int) -> Callable[[int], tuple[float, float]]:
        def run(_r: int) -> tuple[float, float]:
            assert python is not None
            dbname = f"bench_{kind.replace('-', '_')}"
            url = recreate_database(base_url, dbname)
            return run_child(python, kind, url, n, c, batch)

        return run

    if "pgqueuer" in only:
        for driver in ("asyncpg", "psycopg"):
            for batch in sorted({PGQUEUER_DOCUMENTED_BATCH, b}):
                rows.append(
                    (
                        f"pgqueuer-{driver}",
                        f"{c} conn, batch {batch}",
                        scratch(f"pgqueuer-{driver}", batch),
                    )
                )
    if "procrastinate" in only:
        rows.append(("procrastinate", f"concurrency {c}", scratch("procrastinate", b)))
    if "floor" in only:

        def floor(_r: int) -> tuple[float, float]:
            return run_floor(recreate_database(base_url, "bench_floor"), n, c, b)

        rows.append(("floor (bare SQL)", common, floor))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every contender --runs times (interleaved), print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PGPORT", DEFAULT_PGPORT)))
    parser.add_argument("--only", default="ours,rest,pgqueuer,procrastinate,floor")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--shared-database",
        action="store_true",
        help="with --url: delete only this benchmark's jobs, never truncate",
    )
    parser.add_argument("--url", help="an already prepared database (default: scripts/local-db)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        if args.child.startswith("pgqueuer-"):
            driver = args.child.split("-", 1)[1]
            result = asyncio.run(
                child_pgqueuer(args.url, args.jobs, args.connections, args.batch, driver)
            )
        else:
            result = asyncio.run(child_procrastinate(args.url, args.jobs, args.connections))
        print(json.dumps(result))
        return 0

    SHARED_DATABASE[0] = args.shared_database
    if not args.url:
        args.url = prepare_database(args.port, DATABASE)
    rows = contenders(args)
    measurements = [Measurement(name, settings) for name, settings, _ in rows]
    # Interleaved, so a noisy neighbour on a shared machine hits every contender alike.
    for run in range(args.runs):
        for (name, _settings, runner), m in zip(rows, measurements, strict=True):
            enqueue_seconds, drain_seconds = runner(run)
            m.add(args.jobs, enqueue_seconds, drain_seconds)
            print(
                f"run {run + 1}/{args.runs} {name:<18} {m.settings:<26} drain "
                f"{m.drain[-1]:>8.0f} jobs/s",
                file=sys.stderr,
            )
    for kind in ("pgqueuer_asyncpg", "pgqueuer_psycopg", "procrastinate", "floor"):
        drop = f"bench_{kind}"
        with psycopg.connect(args.url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{drop}" with (force)')

    pgq = [m.medians() for m in measurements if m.name.startswith("pgqueuer")]
    best = max(pgq, key=lambda x: x["drain"]) if pgq else None
    table = []
    for m in measurements:
        med = m.medians()
        ratio = ("-", "-")
        if best:
            ratio = (
                f"{med['drain'] / best['drain']:.2f}x",
                f"{med['end_to_end'] / best['end_to_end']:.2f}x",
            )
        table.append(
            [
                m.name,
                m.settings,
                f"{med['enqueue']:.0f}",
                f"{med['drain']:.0f}",
                f"{med['end_to_end']:.0f}",
                ratio[0],
                ratio[1],
            ]
        )
    summary = machine_summary(args.url)
    print(
        f"bench/queue: {args.jobs} no-op jobs, median of {args.runs} runs; "
        f"{summary['cpus']} CPUs, {summary['postgres']}, {summary['date']}"
    )
    print(f"  postgres: {summary['postgres_settings']}")
    print(
        render_table(
            [
                "contender",
                "settings",
                "enqueue/s",
                "drain/s",
                "end-to-end/s",
                "drain vs pgqueuer best",
                "e2e vs pgqueuer best",
            ],
            table,
        )
    )
    if args.json:
        write_json(
            args.json,
            {
                "jobs": args.jobs,
                "runs": args.runs,
                "machine": summary,
                "results": measurements,
                "medians": {m.name + " " + m.settings: m.medians() for m in measurements},
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
