"""Many worker machines on one Postgres: 1, 2 and 4 gunicorn instances over 1,000 stores (issue 14).

    .venv/bin/python bench/scale.py --stores 1000 --workers 1,2,4

One database (scripts/local-db --fresh on --pgport), one Dovecot with a mailbox per store, the
fake Claude and fake Shopify with realistic latency (1.5 s and 0.3 s a call) and the SMTP sink,
each in its own process (bench/pipeline.py's servers). Per row, N separate gunicorn instances run
the worker exactly as the image does (the Dockerfile's CMD), as N machines would; the driver is
their cron: /fetch-emails every --fetch-every seconds (to the first instance, or to every one
with --fetch-trigger all) and /process-queue every --process-every seconds to every instance.
Each row delivers --emails-per-store new emails into every store's mailbox at once and waits
until every one has its reply in the sink.

Printed per row: the time until every store's new mail was stored (one sweep of all stores),
emails answered per hour, arrival-to-reply p50/p95 and the slowest store's, database work per
email (transactions, statements if pg_stat_statements is loaded, rows written, WAL bytes), CPU
per email (the gunicorn instances, the Postgres server), the machine's CPU use and load average,
the most connections the instances held, and throughput against the 1-instance row of the same
run. Never part of the test run; tests/integration/test_bench_smoke.py runs a tiny one.
"""

from __future__ import annotations

from script_path import ROOT  # first: swaps bench/ for the repository root on sys.path

# isort: split

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

from bench import pipeline
from bench.common import render_table
from worker.config import DEFAULTS
from worker.devstack.dovecot import DovecotServer
from worker.devstack.tls import create_test_ca

SAMPLE_SECONDS = 0.5  # how often the driver samples connections while a row runs
BACKENDS_EXIT_SECONDS = 10.0  # how long stopped instances' backends may take to go


# --- what a row costs: counters read before and after -------------------------------------------


@dataclass
class DbCounters:
    """The database's cumulative counters at one moment; a row is the difference of two."""

    xacts: int
    rows_written: int
    wal_bytes: int
    statements: int | None
    postgres_cpu: float  # seconds, the server's processes (reaped ones through the postmaster)
    table_writes: dict[str, int]  # rows inserted, updated or deleted, per table
    # the cluster's, not the database's (a bench cluster runs nothing else)
    wal_syncs: int  # WAL flushes to disk: a commit waits for one (or shares one)
    wal_full_pages: int  # full-page images, the first change of a page after a checkpoint
    pages_written: int  # data pages the checkpointer, bgwriter and backends wrote

    def writes_since(self, before: DbCounters, per: int) -> dict[str, float]:
        """Rows written per table (per `per` emails or stores) since `before`, most first."""
        changed = {
            name: (n - before.table_writes.get(name, 0)) / per
            for name, n in self.table_writes.items()
        }
        return {k: round(v, 2) for k, v in sorted(changed.items(), key=lambda kv: -kv[1]) if v}


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    idle = ticks[3] + ticks[4]
    total = sum(ticks)
    return (total - idle) / pipeline.CLK_TCK, total / pipeline.CLK_TCK


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def postmaster_pid(data_directory: str) -> int:
    """The pid of the server whose data directory this is (its command line names it)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # its children rename themselves ("postgres: ..."), so only the postmaster matches
        if data_directory.encode() in argv and argv[0].endswith((b"postgres", b"postmaster")):
            return int(entry.name)
    raise SystemExit(f"no postmaster found for {data_directory}")


def postgres_cpu(postmaster: int) -> float:
    """CPU seconds of the server: the postmaster, its reaped children and its live children."""
    fields = _stat_fields(postmaster)
    if fields is None:
        return 0.0
    # utime, stime, cutime, cstime: fields 14-17 of stat (11-14 after the command)
    total = sum(int(x) for x in fields[11:15])
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            child = _stat_fields(int(entry.name))
            if child is not None and child[1] == str(postmaster):
                total += int(child[11]) + int(child[12])
    return total / pipeline.CLK_TCK


def read_db_counters(url: str, postmaster: int) -> DbCounters:
    """Read with no worker connected: a backend reports its statistics when it exits, or up to
    ten seconds after it went idle (PGSTAT_IDLE_INTERVAL), so the instances are stopped first."""
    with psycopg.connect(url, autocommit=True) as conn:
        # A stopped instance's backends exit (and report) a moment after its pool closed them.
        deadline = time.monotonic() + BACKENDS_EXIT_SECONDS
        while connections_held(conn, conn.info.backend_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        row = conn.execute(
            "select xact_commit + xact_rollback, tup_inserted + tup_updated + tup_deleted,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
            " from pg_stat_database where datname = current_database()"
        ).fetchone()
        assert row is not None
        statements = pipeline.db_counters(conn).statements
        wal = conn.execute(
            "select w.wal_sync, w.wal_fpi,"
            " b.buffers_checkpoint + b.buffers_clean + b.buffers_backend"
            " from pg_stat_wal w, pg_stat_bgwriter b"
        ).fetchone()
        assert wal is not None
        tables = conn.execute(
            "select schemaname || '.' || relname, n_tup_ins + n_tup_upd + n_tup_del"
            " from pg_stat_all_tables where schemaname not in ('pg_catalog', 'information_schema')"
            " and schemaname not like 'pg_toast%%'"
        ).fetchall()
    return DbCounters(
        xacts=int(row[0]),
        rows_written=int(row[1]),
        wal_bytes=int(row[2]),
        statements=statements,
        postgres_cpu=postgres_cpu(postmaster),
        table_writes={str(name): int(n) for name, n in tables},
        wal_syncs=int(wal[0]),
        wal_full_pages=int(wal[1]),
        pages_written=int(wal[2]),
    )


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (gunicorn's master, its worker, the worker's parse pool)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                parents[int(entry.name)] = int(fields[1])
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def process_cpu(pids: list[int]) -> dict[int, float]:
    """utime + stime per process, in seconds."""
    return {pid: pipeline.cpu_seconds([pid]) for pid in pids}


def rss_mb(pids: list[int]) -> float:
    """Resident memory of the processes, in MB (shared pages counted in each)."""
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def connections_held(conn: psycopg.Connection[Any], own_pid: int) -> int:
    """Client connections to this database other than the driver's own (pg_cron's launcher
    and the pg_net worker are background workers, not clients)."""
    row = conn.execute(
        "select count(*) from pg_stat_activity where datname = current_database()"
        " and backend_type = 'client backend' and pid <> %s",
        (own_pid,),
    ).fetchone()
    return int(row[0]) if row else 0


# --- a row ---------------------------------------------------------------------------------


@dataclass
class Row:
    """One worker count's measurements."""

    workers: int
    emails: int
    stores: int
    sweep_s: float
    wall_s: float
    emails_per_hour: float
    p50_s: float
    p95_s: float
    slowest_store_s: float
    xacts_per_email: float
    statements_per_email: float | None
    rows_written_per_email: float
    wal_kb_per_email: float
    wal_syncs_per_email: float
    pages_written_per_email: float
    worker_cpu_ms_per_email: float
    postgres_cpu_ms_per_email: float
    machine_cpu_busy_pct: float
    own_cpu_pct: float  # the instances' and the server's share of the machine during the row
    load_average: float
    connections_max: int
    instance_rss_mb_max: float
    bound_emails_per_hour: float | None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Stack:
    """The servers every row shares."""

    url: str
    dovecot: DovecotServer
    claude: pipeline.Child
    shopify: pipeline.Child
    sink_log: Path
    env: dict[str, str]
    work: Path
    postmaster: int


@contextmanager
def instances(stack: Stack, count: int, row_dir: Path) -> Iterator[list[tuple[Any, int]]]:
    """`count` gunicorn instances of the worker, each its own process tree (its own machine)."""
    with ExitStack() as es:
        started = []
        for i in range(count):
            log = row_dir / f"gunicorn-{i}.log"
            started.append(es.enter_context(pipeline.gunicorn(stack.env, log)))
        for _, port in started:
            # A long-lived machine has built its clients and pools: /readyz builds them (the
            # database pool first), so a row does not count every instance's start-up.
            pipeline.http(port, "GET", "/readyz")
        yield started


def stored_times(conn: psycopg.Connection[Any], message_ids: list[str]) -> list[float]:
    """When each of these emails was stored (messages.received_at, unix seconds)."""
    rows = conn.execute(
        "select extract(epoch from received_at)::float8 from public.messages"
        " where message_id = any(%s)",
        (message_ids,),
    ).fetchall()
    return [float(r[0]) for r in rows]


def run_row(
    stack: Stack,
    args: argparse.Namespace,
    workers: int,
    emails: list[pipeline.BenchEmail],
) -> Row:
    """Deliver `emails` at once and drive `workers` instances until every one is answered."""
    row_dir = stack.work / f"row-{workers}"
    row_dir.mkdir()
    replied_before = len(pipeline.read_sink_log(stack.sink_log))
    ids = [e.message_id for e in emails]
    wanted = set(ids)
    before = read_db_counters(stack.url, stack.postmaster)
    with (
        instances(stack, workers, row_dir) as running,
        psycopg.connect(stack.url, autocommit=True) as conn,
    ):
        own_pid = conn.info.backend_pid
        roots = [proc.pid for proc, _ in running]
        cpu_before = process_cpu([p for root in roots for p in process_tree(root)])
        busy_before, total_before = machine_cpu()
        arrivals: dict[str, float] = {}
        started = time.time()
        pipeline.deliver(stack.dovecot, emails, arrivals)
        ports = [port for _, port in running]
        fetch_ports = ports if args.fetch_trigger == "all" else ports[:1]
        deadline = time.monotonic() + args.timeout
        next_fetch = next_process = next_sample = 0.0
        most_connections = 0
        most_rss = 0.0
        replies: list[tuple[float, str]] = []
        while True:
            now = time.monotonic()
            if now >= next_fetch:
                for port in fetch_ports:
                    pipeline.http(port, "POST", "/fetch-emails")
                next_fetch = now + args.fetch_every
            if now >= next_process:
                for port in ports:
                    pipeline.http(port, "POST", "/process-queue")
                next_process = now + args.process_every
            if now >= next_sample:
                most_connections = max(most_connections, connections_held(conn, own_pid))
                most_rss = max([most_rss, *(rss_mb(process_tree(root)) for root in roots)])
                next_sample = now + SAMPLE_SECONDS
            replies = [
                r for r in pipeline.read_sink_log(stack.sink_log)[replied_before:] if r[1] in wanted
            ]
            if len(replies) >= len(emails):
                break
            for proc, _ in running:
                if proc.poll() is not None:
                    raise SystemExit(f"a gunicorn instance died; see {row_dir}")
            if now > deadline:
                raise SystemExit(
                    f"{workers} instances: timed out with {len(replies)} of {len(emails)}"
                    f" replies; see {row_dir}"
                )
            time.sleep(pipeline.POLL_SECONDS)
        cpu_after = process_cpu([p for root in roots for p in process_tree(root)])
        busy_after, total_after = machine_cpu()
        load = os.getloadavg()[0]
        stored = stored_times(conn, ids)
        polls = conn.execute(
            "select count(*) from public.job_queue where job_type = 'fetch_mailbox'"
            " and completed_at >= to_timestamp(%s)",
            (started,),
        ).fetchone()
    after = read_db_counters(stack.url, stack.postmaster)

    finished = max(stamp for stamp, _ in replies)
    by_ref = {ref: stamp for stamp, ref in replies}
    latencies = {e.message_id: by_ref[e.message_id] - arrivals[e.message_id] for e in emails}
    per_store: dict[int, list[float]] = {}
    for e in emails:
        per_store.setdefault(e.store, []).append(latencies[e.message_id])
    n = len(emails)
    wall = finished - started
    statements = (
        (after.statements - before.statements) / n
        if after.statements is not None and before.statements is not None
        else None
    )
    busy, total = busy_after - busy_before, total_after - total_before
    worker_cpu = sum(t - cpu_before.get(pid, 0.0) for pid, t in cpu_after.items())
    # Two Claude calls (classify, draft) and a Shopify lookup per email, one slot each.
    external = 2 * args.claude_latency + args.shopify_latency
    concurrency = int(stack.env["PROCESS_CONCURRENCY"])
    bound = workers * concurrency / external * 3600 if external else None
    return Row(
        workers=workers,
        emails=n,
        stores=len(per_store),
        sweep_s=round(max(stored) - started, 1) if len(stored) == n else float("nan"),
        wall_s=round(wall, 1),
        emails_per_hour=round(n / wall * 3600),
        p50_s=round(statistics.median(latencies.values()), 2),
        p95_s=round(pipeline.percentile(list(latencies.values()), 0.95), 2),
        slowest_store_s=round(max(statistics.median(v) for v in per_store.values()), 2),
        xacts_per_email=round((after.xacts - before.xacts) / n, 1),
        statements_per_email=round(statements, 1) if statements is not None else None,
        rows_written_per_email=round((after.rows_written - before.rows_written) / n, 1),
        wal_kb_per_email=round((after.wal_bytes - before.wal_bytes) / n / 1024, 1),
        wal_syncs_per_email=round((after.wal_syncs - before.wal_syncs) / n, 2),
        pages_written_per_email=round((after.pages_written - before.pages_written) / n, 2),
        worker_cpu_ms_per_email=round(worker_cpu * 1000 / n, 1),
        postgres_cpu_ms_per_email=round((after.postgres_cpu - before.postgres_cpu) * 1000 / n, 1),
        machine_cpu_busy_pct=round(100 * busy / total, 1) if total else 0.0,
        own_cpu_pct=round(100 * (worker_cpu + after.postgres_cpu - before.postgres_cpu) / total, 1)
        if total
        else 0.0,
        load_average=round(load, 2),
        connections_max=most_connections,
        instance_rss_mb_max=round(most_rss, 1),
        bound_emails_per_hour=round(bound) if bound else None,
        extra={
            # the row's mailbox reads (fetch jobs, decision 0021)
            "fetch_jobs_per_email": round(int(polls[0]) / n, 2) if polls else 0.0,
            "rows_per_email_by_table": after.writes_since(before, n),
            "wal_full_pages_per_email": round(
                (after.wal_full_pages - before.wal_full_pages) / n, 2
            ),
        },
    )


def warm_up(stack: Stack, args: argparse.Namespace, stores: int) -> float:
    """One sweep of empty mailboxes, so every row finds the stores already connected.

    A store's first fetch records its baseline (decision 0004); the rows then measure steady
    fetching. Returns the seconds it took until every store had a mailbox position.
    """
    row_dir = stack.work / "warm-up"
    row_dir.mkdir()
    with (
        instances(stack, 1, row_dir) as running,
        psycopg.connect(stack.url, autocommit=True) as conn,
    ):
        port = running[0][1]
        started = time.monotonic()
        deadline = started + args.timeout
        next_trigger = 0.0
        while True:
            now = time.monotonic()
            if now >= next_trigger:
                pipeline.http(port, "POST", "/fetch-emails")
                pipeline.http(port, "POST", "/process-queue")  # its fetch lane reads mailboxes too
                next_trigger = now + args.process_every
            row = conn.execute("select count(*) from public.mailbox_state").fetchone()
            if row and int(row[0]) >= stores:
                return time.monotonic() - started
            if now > deadline:
                raise SystemExit(f"warm-up: {row[0] if row else 0} of {stores} stores connected")
            time.sleep(pipeline.POLL_SECONDS)


@dataclass
class IdleSweep:
    """One sweep of every store with no new mail: what polling costs, per store."""

    stores: int
    seconds: float
    xacts_per_store: float
    statements_per_store: float | None
    rows_written_per_store: float
    wal_bytes_per_store: float
    wal_syncs_per_store: float
    worker_cpu_ms_per_store: float
    postgres_cpu_ms_per_store: float
    rows_per_store_by_table: dict[str, float] = field(default_factory=dict)


def queue_is_idle(conn: psycopg.Connection[Any]) -> bool:
    """No job due or running, fetch jobs included."""
    row = conn.execute(
        "select count(*) from public.job_queue where status = 'processing'"
        " or (status = 'pending' and next_retry_at <= now())"
    ).fetchone()
    return row is not None and int(row[0]) == 0


def idle_sweep(stack: Stack, args: argparse.Namespace, stores: int) -> IdleSweep:
    """Trigger one fetch with every mailbox empty and wait until it and its jobs are done."""
    row_dir = stack.work / "idle-sweep"
    row_dir.mkdir()
    before = read_db_counters(stack.url, stack.postmaster)
    with (
        instances(stack, 1, row_dir) as running,
        psycopg.connect(stack.url, autocommit=True) as conn,
    ):
        port = running[0][1]
        roots = [proc.pid for proc, _ in running]
        cpu_before = process_cpu([p for root in roots for p in process_tree(root)])
        started = time.monotonic()
        status, body = pipeline.http(port, "POST", "/fetch-emails")
        if status != 202:
            raise SystemExit(f"idle sweep: /fetch-emails answered {status} {body}")
        run_id = body["run_id"]
        deadline = started + args.timeout
        next_process = 0.0
        while True:
            now = time.monotonic()
            if now >= next_process:
                pipeline.http(port, "POST", "/process-queue")
                next_process = now + args.process_every
            _, record = pipeline.http(port, "GET", f"/runs/{run_id}")
            if record.get("status") != "running" and queue_is_idle(conn):
                break
            if now > deadline:
                raise SystemExit("idle sweep: timed out")
            time.sleep(pipeline.POLL_SECONDS / 4)
        seconds = time.monotonic() - started
        cpu_after = process_cpu([p for root in roots for p in process_tree(root)])
    after = read_db_counters(stack.url, stack.postmaster)
    statements = (
        (after.statements - before.statements) / stores
        if after.statements is not None and before.statements is not None
        else None
    )
    worker_cpu = sum(t - cpu_before.get(pid, 0.0) for pid, t in cpu_after.items())
    return IdleSweep(
        stores=stores,
        seconds=round(seconds, 2),
        xacts_per_store=round((after.xacts - before.xacts) / stores, 2),
        statements_per_store=round(statements, 2) if statements is not None else None,
        rows_written_per_store=round((after.rows_written - before.rows_written) / stores, 2),
        wal_bytes_per_store=round((after.wal_bytes - before.wal_bytes) / stores),
        wal_syncs_per_store=round((after.wal_syncs - before.wal_syncs) / stores, 3),
        worker_cpu_ms_per_store=round(worker_cpu * 1000 / stores, 2),
        postgres_cpu_ms_per_store=round(
            (after.postgres_cpu - before.postgres_cpu) * 1000 / stores, 2
        ),
        rows_per_store_by_table=after.writes_since(before, stores),
    )


def start_latency_proxy(target: tuple[str, int], round_trip: float) -> pipeline.Child:
    """worker/devstack/latency_proxy in its own process: round_trip seconds per round trip."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker.devstack.latency_proxy",
            "--target",
            f"{target[0]}:{target[1]}",
            "--delay",
            str(round_trip / 2),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        preexec_fn=pipeline._die_with_parent,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"latency proxy did not start: {line!r}")
    return pipeline.Child(proc, line.split(" ", 1)[1])


def table_sizes(url: str) -> dict[str, dict[str, float]]:
    """Rows and bytes (indexes and TOAST included) of the tables history grows in."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("analyze public.events, public.job_queue, public.messages, public.replies")
        found = conn.execute(
            "select c.relname, c.reltuples, pg_total_relation_size(c.oid)"
            " from pg_class c join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = 'public' and c.relkind = 'r'"
            " and c.relname in ('events', 'job_queue', 'messages', 'replies', 'conversations')"
        ).fetchall()
    return {
        str(name): {
            "rows": int(rows),
            "bytes_per_row": round(int(size) / rows) if rows > 0 else 0,
        }
        for name, rows, size in found
    }


# --- the run -------------------------------------------------------------------------------


def parse_counts(text: str) -> list[int]:
    counts = [int(x) for x in text.split(",") if x.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("worker counts are positive integers, e.g. 1,2,4")
    return counts


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every row of the benchmark; servers are stopped on return."""
    counts: list[int] = args.workers
    per_row = args.stores * args.emails_per_store
    run_tag = f"{int(time.time())}"
    # One catalogue for every row; row r takes emails [r * per_row, (r + 1) * per_row), which
    # puts emails_per_store of them in each store (customer_emails deals them round-robin).
    all_emails = pipeline.customer_emails(per_row * len(counts), args.stores, run_tag)
    pipeline.check_sendable(all_emails)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.chmod(0o755)
    with ExitStack() as es:
        url = args.database_url or pipeline.prepare_database(
            args.pgport, args.database, not args.no_pg_stat_statements
        )
        database = urlsplit(url).path.lstrip("/") or "postgres"
        data_directory = pipeline.as_platform_admin(args.pgport, database, "show data_directory")
        max_connections = int(
            pipeline.as_platform_admin(args.pgport, database, "show max_connections")
        )
        ca = create_test_ca(work / "ca")
        (work / "dovecot").mkdir()
        dovecot = es.enter_context(DovecotServer(ca, directory=work / "dovecot"))
        for i in range(args.stores):
            dovecot.add_user(pipeline.store_address(i), pipeline.IMAP_PASSWORD)
        claude = pipeline.start_child("claude", "--latency", str(args.claude_latency))
        es.callback(claude.stop)
        shopify = pipeline.start_child(
            "shopify",
            "--latency",
            str(args.shopify_latency),
            "--emails",
            str(len(all_emails)),
            "--stores",
            str(args.stores),
            "--run-tag",
            run_tag,
        )
        es.callback(shopify.stop)
        sink_log = work / "sink.log"
        sink = pipeline.start_child("smtp", "--ca-dir", str(ca.directory), "--log", str(sink_log))
        es.callback(sink.stop)
        imap_address = None
        if args.imap_rtt > 0:
            proxy = start_latency_proxy((dovecot.host, dovecot.imaps_port), args.imap_rtt)
            es.callback(proxy.stop)
            host, _, port = proxy.address.rpartition(":")
            imap_address = (host, int(port))
        created = time.monotonic()
        pipeline.create_stores(
            url, args.stores, dovecot, sink.address, True, len(all_emails) + 100, imap_address
        )
        create_seconds = time.monotonic() - created

        concurrency = args.concurrency or DEFAULTS.process_concurrency
        env = {
            "DATABASE_URL": url,
            "WORKER_SECRET": pipeline.WORKER_SECRET,
            "ANTHROPIC_API_KEY": pipeline.ANTHROPIC_KEY,
            "ANTHROPIC_BASE_URL": claude.address,
            "SHOPIFY_BASE_URL": shopify.address,
            "EXTRA_CA_FILE": str(ca.ca_file),
            "PROCESS_CONCURRENCY": str(concurrency),
            # A throughput run answers far more than a store's hourly reply rate allows.
            "STORE_REPLIES_PER_HOUR": str(len(all_emails) + 100),
            "LOG_LEVEL": args.log_level,
        }
        for item in args.env:
            name, _, value = item.partition("=")
            env[name] = value
        postmaster = postmaster_pid(data_directory)
        stack = Stack(url, dovecot, claude, shopify, sink_log, env, work, postmaster)
        settings = {
            "stores": args.stores,
            "emails_per_store": args.emails_per_store,
            "PROCESS_CONCURRENCY": concurrency,
            "claude_latency_s": args.claude_latency,
            "shopify_latency_s": args.shopify_latency,
            "fetch_every_s": args.fetch_every,
            "process_every_s": args.process_every,
            "fetch_trigger": args.fetch_trigger,
            "imap_rtt_s": args.imap_rtt,
            "env": list(args.env),
            "cpus": os.cpu_count(),
            "max_connections": max_connections,
        }
        print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), flush=True)
        print(f"{args.stores} stores created in {create_seconds:.1f} s", flush=True)
        warm = warm_up(stack, args, args.stores)
        print(f"first sweep of {args.stores} empty mailboxes: {warm:.1f} s", flush=True)
        idle = idle_sweep(stack, args, args.stores)
        print(f"idle sweep (no new mail, 1 instance): {idle}", flush=True)
        rows = []
        for r, workers in enumerate(counts):
            emails = all_emails[r * per_row : (r + 1) * per_row]
            row = run_row(stack, args, workers, emails)
            rows.append(row)
            print(f"{workers} instance(s): {row.emails_per_hour:,} emails/h", flush=True)
        sizes = table_sizes(url)
    if not args.keep:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    else:
        print(f"kept {work}", flush=True)
    return {
        "settings": settings,
        "first_sweep_s": round(warm, 1),
        "idle_sweep": idle,
        "rows": rows,
        "table_sizes": sizes,
    }


def table(rows: Sequence[Row]) -> str:
    """The rows as one plain table; throughput is compared with the first row of the run."""
    base = rows[0].emails_per_hour if rows else 0.0
    headers = [
        "instances",
        "sweep s",
        "wall s",
        "emails/h",
        "vs first",
        "bound/h",
        "p50 s",
        "p95 s",
        "slowest store s",
        "xacts/email",
        "stmts/email",
        "rows/email",
        "WAL KB/email",
        "WAL syncs/email",
        "pages written/email",
        "worker CPU ms/email",
        "pg CPU ms/email",
        "machine CPU %",
        "ours %",
        "load",
        "conns max",
        "RSS MB/instance",
    ]
    body = [
        [
            r.workers,
            r.sweep_s,
            r.wall_s,
            f"{r.emails_per_hour:,.0f}",
            f"{r.emails_per_hour / base:.2f}x" if base else "-",
            f"{r.bound_emails_per_hour:,.0f}" if r.bound_emails_per_hour else "-",
            r.p50_s,
            r.p95_s,
            r.slowest_store_s,
            r.xacts_per_email,
            r.statements_per_email if r.statements_per_email is not None else "-",
            r.rows_written_per_email,
            r.wal_kb_per_email,
            r.wal_syncs_per_email,
            r.pages_written_per_email,
            r.worker_cpu_ms_per_email,
            r.postgres_cpu_ms_per_email,
            r.machine_cpu_busy_pct,
            r.own_cpu_pct,
            r.load_average,
            r.connections_max,
            r.instance_rss_mb_max,
        ]
        for r in rows
    ]
    return render_table(headers, body)


def _jsonable(value: Any) -> Any:
    return asdict(value) if hasattr(value, "__dataclass_fields__") else str(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=int, default=20, help="stores (mailboxes); 1000 full")
    parser.add_argument("--emails-per-store", type=int, default=1, help="new emails per row")
    parser.add_argument(
        "--workers", type=parse_counts, default=[1, 2], help="instance counts, e.g. 1,2,4"
    )
    parser.add_argument(
        "--concurrency", type=int, default=0, help="PROCESS_CONCURRENCY (default: Settings')"
    )
    parser.add_argument("--claude-latency", type=float, default=1.5, help="seconds per call")
    parser.add_argument("--shopify-latency", type=float, default=0.3, help="seconds per call")
    parser.add_argument(
        "--imap-rtt",
        type=float,
        default=0.1,
        help="seconds per IMAP round trip (a latency proxy in front of Dovecot; 0: none)",
    )
    parser.add_argument(
        "--fetch-every", type=float, default=5.0, help="seconds between /fetch-emails triggers"
    )
    parser.add_argument(
        "--process-every", type=float, default=1.0, help="seconds between /process-queue triggers"
    )
    parser.add_argument(
        "--fetch-trigger",
        choices=("first", "all"),
        default="first",
        help="send /fetch-emails to the first instance (one cron URL) or to every instance",
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra worker setting"
    )
    parser.add_argument("--pgport", type=int, default=5453)
    parser.add_argument("--database", default="postgres")
    parser.add_argument("--database-url", help="use this database instead of preparing one")
    parser.add_argument("--no-pg-stat-statements", action="store_true")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per row at most")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    result = run(args)
    print(table(result["rows"]))
    print("history: " + ", ".join(f"{k} {v}" for k, v in result["table_sizes"].items()))
    if args.json:
        print(json.dumps(result, default=_jsonable))


if __name__ == "__main__":
    main()
