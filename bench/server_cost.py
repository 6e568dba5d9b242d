"""bench/server_cost: what one drained job costs the database server, with no client at all.

    .venv/bin/python bench/server_cost.py [--jobs 20000] [--runs 3] [--sessions 4] [--batch 50]
                                          [--json F]

bench/queue.py measures whole drains, client included; this isolates the server's share. The
same claim-and-acknowledge loop as bench/queue runs inside Postgres, as a procedure that commits
after every claim and every acknowledgement (each call its own transaction, like the client's),
so no Python, driver or network time is counted:
  floor                 bare SQL: FOR UPDATE SKIP LOCKED claim of a batch + one batch update
  ours, no conversation dequeue_jobs + complete_jobs, jobs without a conversation id
  ours                  the same, each job its own conversation (exclusivity on, as bench/queue)
Columns: microseconds per job in one session (wall time with synchronous_commit off, so it is
the server's CPU time), and --sessions concurrent sessions draining one queue: jobs/s and the
machine's CPU microseconds per job (from /proc/stat; exact only on an otherwise idle machine).
Medians of --runs; the contenders are interleaved run by run.
"""

from __future__ import annotations

import script_path  # noqa: F401  (first: swaps bench/ for the repository root on sys.path)

# isort: split

import argparse
import os
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    DEFAULT_PGPORT,
    machine_summary,
    median,
    prepare_database,
    render_table,
    stopwatch,
    write_json,
)

DATABASE = "bench"
JOB_TYPE = "bench_server"
ENQUEUE_CHUNK = 1000

# Both loops stop when a claim comes back empty: every job is due from the start, so an empty
# claim means the others hold the rest; the row counts are checked afterwards.
PROCEDURES = """
create schema if not exists bench;
create or replace procedure bench.drain_ours(p_worker text, p_batch int, p_job_type text)
language plpgsql as $$
declare
    v_ids uuid[];
begin
    loop
        select array_agg(id) into v_ids
        from public.dequeue_jobs(p_worker, p_batch, 300, array[p_job_type]);
        commit;
        exit when v_ids is null;
        perform public.complete_jobs(p_worker, v_ids);
        commit;
    end loop;
end;
$$;
drop table if exists bench.floor_jobs;
create table bench.floor_jobs (
    id bigint generated always as identity primary key,
    status text not null default 'pending',
    payload jsonb not null,
    locked_by text,
    locked_until timestamptz,
    created_at timestamptz not null default now()
);
create index floor_jobs_pending_idx on bench.floor_jobs (id) where status = 'pending';
create or replace procedure bench.drain_floor(p_worker text, p_batch int)
language plpgsql as $$
declare
    v_ids bigint[];
begin
    loop
        with claimed as (
            update bench.floor_jobs j
            set status = 'processing', locked_by = p_worker,
                locked_until = now() + interval '300 seconds'
            from (select f.id from bench.floor_jobs f where f.status = 'pending'
                  order by f.id limit p_batch for update skip locked) c
            where j.id = c.id
            returning j.id
        )
        select array_agg(id) into v_ids from claimed;
        commit;
        exit when v_ids is null;
        update bench.floor_jobs set status = 'completed', locked_until = null
        where id = any (v_ids) and locked_by = p_worker;
        commit;
    end loop;
end;
$$;
"""


def busy_cpu_seconds() -> float:
    """CPU seconds this machine has spent not idle (all cores), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def fill(url: str, kind: str, jobs: int) -> None:
    """Empty the contender's queue and enqueue `jobs` due jobs, set-based."""
    with psycopg.connect(url, autocommit=True) as conn:
        if kind == "floor":
            conn.execute("truncate bench.floor_jobs")
            insert = (
                "insert into bench.floor_jobs (payload) select jsonb_build_object('n', n)"
                " from generate_series(%s::int, %s::int) n"
            )
        else:
            conn.execute("delete from public.job_queue where job_type = %s", (JOB_TYPE,))
            conversation = "gen_random_uuid()" if kind == "ours" else "null"
            insert = (
                "select public.enqueue_jobs((select jsonb_agg(jsonb_build_object("
                f"'job_type', '{JOB_TYPE}', 'payload', jsonb_build_object('n', n),"
                f" 'conversation_id', {conversation})) from generate_series(%s::int, %s::int) n))"
            )
        for first in range(0, jobs, ENQUEUE_CHUNK):
            conn.execute(insert, (first, min(first + ENQUEUE_CHUNK, jobs) - 1))
        conn.execute("vacuum analyze " + ("bench.floor_jobs" if kind == "floor" else "job_queue"))


def left_over(url: str, kind: str) -> int:
    """Jobs not completed after a drain (must be 0)."""
    with psycopg.connect(url) as conn:
        if kind == "floor":
            row = conn.execute("select count(*) from bench.floor_jobs where status <> 'completed'")
        else:
            row = conn.execute(
                "select count(*) from public.job_queue where job_type = %s"
                " and status <> 'completed'",
                (JOB_TYPE,),
            )
        found = row.fetchone()
    return int(found[0]) if found else -1


def drain(url: str, kind: str, sessions: int, batch: int) -> tuple[float, float]:
    """Drain with `sessions` concurrent procedure calls; (elapsed seconds, busy CPU seconds)."""
    call = (
        ("call bench.drain_floor(%s, %s)", ())
        if kind == "floor"
        else ("call bench.drain_ours(%s, %s, %s)", (JOB_TYPE,))
    )
    conns = [psycopg.connect(url, autocommit=True) for _ in range(sessions)]
    errors: list[BaseException] = []
    start = threading.Barrier(sessions + 1)

    def run(i: int) -> None:
        try:
            conns[i].execute("set synchronous_commit = off")
            start.wait()
            conns[i].execute(call[0], (f"{kind}-{i}", batch, *call[1]))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(sessions)]
    try:
        for t in threads:
            t.start()
        start.wait()
        cpu_before = busy_cpu_seconds()
        with stopwatch() as elapsed:
            for t in threads:
                t.join()
        cpu = busy_cpu_seconds() - cpu_before
    finally:
        for c in conns:
            c.close()
    if errors:
        raise errors[0]
    left = left_over(url, kind)
    if left:
        raise RuntimeError(f"{kind}: {left} jobs left after the drain")
    return elapsed[0], cpu


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every contender --runs times (interleaved), print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PGPORT", DEFAULT_PGPORT)))
    parser.add_argument("--url", help="an already prepared database (default: scripts/local-db)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    url = args.url or prepare_database(args.port, DATABASE)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(PROCEDURES)

    kinds = {"floor": "floor (bare SQL)", "null": "ours, no conversation", "ours": "ours"}
    single: dict[str, list[float]] = {k: [] for k in kinds}
    rate: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    try:
        for run in range(args.runs):
            for kind in kinds:
                fill(url, kind, args.jobs)
                seconds, _ = drain(url, kind, 1, args.batch)
                single[kind].append(seconds / args.jobs * 1e6)
                fill(url, kind, args.jobs)
                seconds, busy = drain(url, kind, args.sessions, args.batch)
                rate[kind].append(args.jobs / seconds)
                cpu[kind].append(busy / args.jobs * 1e6)
                print(
                    f"run {run + 1}/{args.runs} {kinds[kind]:<22} one session"
                    f" {single[kind][-1]:6.1f} us/job, {args.sessions} sessions"
                    f" {rate[kind][-1]:8.0f} jobs/s",
                    file=sys.stderr,
                )
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("drop schema bench cascade")
            conn.execute("delete from public.job_queue where job_type = %s", (JOB_TYPE,))
    floor_single, floor_cpu = median(single["floor"]), median(cpu["floor"])
    table: list[list[Any]] = []
    for kind, name in kinds.items():
        table.append(
            [
                name,
                f"{median(single[kind]):.1f}",
                f"{median(single[kind]) / floor_single:.1f}x" if floor_single else "-",
                f"{median(rate[kind]):.0f}",
                f"{median(cpu[kind]):.1f}",
                # /proc/stat counts in clock ticks: a tiny run may register none
                f"{median(cpu[kind]) / floor_cpu:.1f}x" if floor_cpu else "-",
            ]
        )
    summary = machine_summary(url)
    print(
        f"bench/server_cost: {args.jobs} jobs, batch {args.batch}, median of {args.runs} runs;"
        f" {summary['cpus']} CPUs, {summary['postgres']}, {summary['date']}"
    )
    print(
        render_table(
            [
                "contender",
                "1 session us/job",
                "vs floor",
                f"{args.sessions} sessions jobs/s",
                "CPU us/job",
                "vs floor",
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
                "sessions": args.sessions,
                "batch": args.batch,
                "machine": summary,
                "single_session_us_per_job": single,
                "sessions_jobs_per_second": rate,
                "sessions_cpu_us_per_job": cpu,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
