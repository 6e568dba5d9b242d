"""Shared plumbing for the benchmarks: the database they run on, timing, statistics, tables.

Only the standard library and psycopg are imported here, so the contender processes that run
under bench/.venv (pgqueuer, procrastinate) can import it too.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PGPORT = 5449
LOCAL_DB = ROOT / "scripts" / "local-db"


def prepare_database(port: int, dbname: str) -> str:
    """Recreate 127.0.0.1:port/dbname with scripts/local-db --fresh; return its DATABASE_URL.

    Fresh every time: local-db, like `supabase db push`, never re-applies a migration it has
    recorded, so a kept database would measure the schema of whichever checkout created it.
    """
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(port), "PGDATABASE": dbname}
    env.pop("PGUSER", None)
    if dbname != "postgres":
        # pg_cron stays in the cluster's own database: moving it here would restart a cluster the
        # test suite shares, and its pg_cron and pg_net tests would find their worker gone. As on
        # a Supabase project's second database, the migrations that use pg_cron cannot apply
        # here; a benchmark drives the worker itself, so it gets every other migration.
        env.setdefault("CRON_DATABASE", "postgres")
        env["MIGRATIONS_DIR"] = str(migrations_without_pg_cron())
    # local-db keeps its lock file open in the servers it starts; closing every descriptor but
    # the standard ones keeps it from leaking ours in the other direction.
    out = subprocess.run(
        [str(LOCAL_DB), "--fresh"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        close_fds=True,
    )
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("DATABASE_URL="):
            return line.split("=", 1)[1].strip()
    raise RuntimeError(f"scripts/local-db printed no DATABASE_URL:\n{out.stdout}\n{out.stderr}")


USES_PG_CRON = re.compile(r"^\s*create extension[^;]*\bpg_cron\b|\bcron\.\w*schedule", re.I | re.M)


def migrations_without_pg_cron() -> Path:
    """A scratch copy of supabase/migrations without the files that use pg_cron."""
    folder = Path(tempfile.mkdtemp(prefix="bench-migrations-"))
    for sql_file in sorted((ROOT / "supabase" / "migrations").glob("*.sql")):
        if not USES_PG_CRON.search(sql_file.read_text()):
            shutil.copy(sql_file, folder / sql_file.name)
    return folder


def with_database(url: str, dbname: str) -> str:
    """The same server and credentials, another database."""
    split = urlsplit(url)
    return urlunsplit(split._replace(path="/" + dbname))


def recreate_database(url: str, dbname: str) -> str:
    """Drop and create a scratch database next to url's; returns its URL."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{dbname}" with (force)')
        conn.execute(f'create database "{dbname}"')
    return with_database(url, dbname)


def drop_database(url: str, dbname: str) -> None:
    """Drop a scratch database (ignoring one that is already gone)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{dbname}" with (force)')


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """Yields a one-element list that holds the elapsed seconds once the block ends."""
    box = [0.0]
    began = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - began


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    """The median, 0.0 for no values."""
    return statistics.median(values) if values else 0.0


@dataclass
class Measurement:
    """One contender's runs: rates in jobs per second, one entry per run."""

    name: str
    settings: str
    enqueue: list[float] = field(default_factory=list)
    drain: list[float] = field(default_factory=list)
    end_to_end: list[float] = field(default_factory=list)
    note: str = ""

    def add(self, jobs: int, enqueue_seconds: float, drain_seconds: float) -> None:
        """Record one run of `jobs` jobs."""
        self.enqueue.append(jobs / enqueue_seconds)
        self.drain.append(jobs / drain_seconds)
        self.end_to_end.append(jobs / (enqueue_seconds + drain_seconds))

    def medians(self) -> dict[str, float]:
        """Median enqueue, drain and end-to-end rates."""
        return {
            "enqueue": median(self.enqueue),
            "drain": median(self.drain),
            "end_to_end": median(self.end_to_end),
        }


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain monospace table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [row[0].ljust(widths[0])]
        parts += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def machine_summary(url: str) -> dict[str, Any]:
    """What the numbers were measured on: CPUs, Python, Postgres version and key settings."""
    with psycopg.connect(url, autocommit=True) as conn:
        version = conn.execute("show server_version").fetchone()
        settings: dict[str, str] = dict(
            conn.execute(
                "select name, setting || coalesce(unit, '') from pg_settings where name in"
                " ('shared_buffers', 'synchronous_commit', 'max_connections', 'autovacuum_naptime')"
            ).fetchall()
        )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "python": sys.version.split()[0],
        "postgres": version[0] if version else "?",
        "postgres_settings": settings,
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write the machine-readable results."""
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)
