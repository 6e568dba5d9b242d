"""Pytest plugin: a Supabase-compatible Postgres prepared by scripts/local-db.

`database_url` (session) is DATABASE_URL_TEST when set, as scripts/test does after its own
set-up; otherwise it runs scripts/local-db on TEST_PGPORT (default 54330). `db` is an autocommit
psycopg connection with dict rows. Tests isolate themselves by unique ids, never by truncation.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import DictRow, dict_row

ROOT = Path(__file__).resolve().parents[2]
LOCAL_DB = ROOT / "scripts" / "local-db"
DEFAULT_TEST_PGPORT = "54330"
LOCAL_DB_TIMEOUT = 900  # seconds; a first run may install packages


def run_local_db(env: dict[str, str], *args: str) -> str:
    """Run scripts/local-db with env and return the DATABASE_URL it printed last."""
    proc = subprocess.run(
        [str(LOCAL_DB), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=LOCAL_DB_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"scripts/local-db failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    last = proc.stdout.strip().splitlines()[-1]
    prefix = "DATABASE_URL="
    if not last.startswith(prefix):
        raise RuntimeError(f"scripts/local-db printed no DATABASE_URL: {proc.stdout!r}")
    return last[len(prefix):]


@pytest.fixture(scope="session")
def database_url() -> str:
    """URL of the test database, prepared once per session."""
    preset = os.environ.get("DATABASE_URL_TEST")
    if preset:
        return preset
    env = dict(os.environ)
    env.update(
        PGHOST="127.0.0.1",
        PGPORT=os.environ.get("TEST_PGPORT", DEFAULT_TEST_PGPORT),
        PGUSER="postgres",
        PGDATABASE="postgres",
    )
    return run_local_db(env)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[DictRow]]:
    """An autocommit connection with dict rows, closed after the test."""
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture(autouse=True)
def _no_digest_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the database, complete the notification digests it scheduled.

    Tests share one database and isolate their jobs by private job types, but every run claims
    `notify` (a store's digest, scheduled by the database itself when a reply is held, a job
    dead-lettered or a breaker opened). A digest left pending would become due a minute later
    and be sent by some later test's run, which would then see an outcome and a message that
    are not its own.
    """
    dsn = None
    for name in ("database_url", "pipeline_dsn"):
        if name in request.fixturenames:
            dsn = str(request.getfixturevalue(name))
            break
    yield
    if dsn is None:
        return
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "update public.job_queue set status = 'completed', completed_at = now(),"
            " result = '{\"outcome\": \"left_by_a_test\"}'"
            " where job_type = 'notify' and status = 'pending'"
        )
