"""The pg_cron jobs reach the worker through pg_net with the bearer token from Vault.

Each scheduled command is read back from cron.job and executed as pg_cron would, against a
worker app listening on loopback; the runners are recorders, so the test proves the wiring (URL
and token from Vault, pg_net request, bearer check) without starting real runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from werkzeug.serving import make_server

from worker import runs
from worker.app import create_app
from worker.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "supabase" / "migrations"
# call_worker (pg_net, the Vault secrets) and the pg_cron schedules that call it.
CRON_MIGRATIONS = (
    MIGRATIONS / "20261129001100_call_worker.sql",
    MIGRATIONS / "20261129001200_cron.sql",
)
SECRET = "cron-test-secret-0123456789abcdef"


@dataclass
class RecordingDb:
    def ping(self) -> bool:
        return True

    def queue_stats(self) -> Mapping[str, Any]:
        return {"jobs": [], "oldest_due_seconds": {}, "breakers": []}


@dataclass
class RecordingServices:
    settings: Settings
    db: RecordingDb = field(default_factory=RecordingDb)
    calls: list[str] = field(default_factory=list)
    runners: dict[str, runs.Runner] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def runner(kind: str) -> runs.Runner:
            def run(budget: runs.Budget) -> Mapping[str, Any]:
                self.calls.append(kind)
                return {"kind": kind}

            return run

        self.runners = {"fetch": runner("fetch"), "process": runner("process")}

    def close(self) -> None:
        pass


@pytest.fixture
def worker(database_url: str) -> Iterator[tuple[str, RecordingServices]]:
    settings = load_settings({"DATABASE_URL": database_url, "WORKER_SECRET": SECRET})
    services = RecordingServices(settings)
    app = create_app(settings, services=services)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", services
    finally:
        server.shutdown()


def set_secret(db: psycopg.Connection[Any], name: str, value: str) -> None:
    row = db.execute("select id from vault.secrets where name = %s", (name,)).fetchone()
    if row:
        db.execute("select vault.update_secret(%s, %s)", (row["id"], value))
    else:
        db.execute("select vault.create_secret(%s, %s)", (value, name))


@pytest.fixture
def vault_secrets(db: psycopg.Connection[Any]) -> Iterator[None]:
    yield
    db.execute("delete from vault.secrets where name in ('worker_url', 'worker_secret')")


def cron_command(db: psycopg.Connection[Any], jobname: str) -> str:
    row = db.execute("select command from cron.job where jobname = %s", (jobname,)).fetchone()
    assert row is not None, f"cron job {jobname} is not scheduled"
    return str(row["command"])


def response_of(db: psycopg.Connection[Any], request_id: int) -> dict[str, Any]:
    """The response pg_net's worker records once the calling transaction has committed."""
    found: dict[str, Any] = {}

    def recorded() -> bool:
        row = db.execute(
            "select * from net._http_response where id = %s", (request_id,)
        ).fetchone()
        if row is not None:
            found.update(row)
        return row is not None

    assert wait_for(recorded), "pg_net recorded no response"
    return found


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_schedules_match_the_seed(db: psycopg.Connection[Any]) -> None:
    rows = db.execute("select jobname, schedule from cron.job order by jobname").fetchall()
    schedules = {r["jobname"]: r["schedule"] for r in rows}
    assert schedules["fetch-emails"] == "*/5 * * * *"
    assert schedules["process-queue"] == "* * * * *"
    assert schedules["aggregate-queue-metrics"] == "*/5 * * * *"
    assert "queue-retention" in schedules


def test_cron_history_is_kept_for_a_week(db: psycopg.Connection[Any]) -> None:
    jobid = db.execute("select jobid from cron.job where jobname = 'process-queue'").fetchone()
    assert jobid is not None
    marker = f"history-test-{time.time_ns()}"
    for age in ("8 days", "6 days"):
        db.execute(
            "insert into cron.job_run_details (jobid, runid, database, username, command,"
            " status, start_time, end_time)"
            " values (%s, -nextval('cron.runid_seq'), current_database(), current_user, %s,"
            " 'succeeded', now() - %s::interval, now() - %s::interval)",
            (jobid["jobid"], marker, age, age),
        )
    db.execute(cron_command(db, "cron-history-retention"))
    kept = db.execute(
        "select now() - end_time < interval '7 days' as recent from cron.job_run_details"
        " where command = %s",
        (marker,),
    ).fetchall()
    assert [row["recent"] for row in kept] == [True]
    db.execute("delete from cron.job_run_details where command = %s", (marker,))


def test_migration_has_no_url_or_token() -> None:
    text = "\n".join(path.read_text() for path in CRON_MIGRATIONS)
    assert "http://" not in text.replace("https://<app>.fly.dev", "")
    assert "Bearer ' || v_secret" in text  # the token only ever comes from Vault
    assert "eyJ" not in text


@pytest.mark.parametrize(
    ("jobname", "kind"), [("fetch-emails", "fetch"), ("process-queue", "process")]
)
def test_cron_command_reaches_worker_authenticated(
    db: psycopg.Connection[Any],
    worker: tuple[str, RecordingServices],
    vault_secrets: None,
    jobname: str,
    kind: str,
) -> None:
    url, services = worker
    set_secret(db, "worker_url", url)
    set_secret(db, "worker_secret", SECRET)
    row = db.execute(cron_command(db, jobname)).fetchone()
    assert row is not None
    request_id = next(iter(row.values()))
    response = response_of(db, request_id)
    assert response["status_code"] == 202, response
    assert '"run_id"' in response["content"]
    assert wait_for(lambda: kind in services.calls)


def test_wrong_token_is_refused(
    db: psycopg.Connection[Any], worker: tuple[str, RecordingServices], vault_secrets: None
) -> None:
    url, services = worker
    set_secret(db, "worker_url", url)
    set_secret(db, "worker_secret", "not-the-worker-secret-at-all-000")
    row = db.execute(cron_command(db, "fetch-emails")).fetchone()
    assert row is not None
    response = response_of(db, next(iter(row.values())))
    assert response["status_code"] == 401
    time.sleep(0.3)
    assert services.calls == []


def test_missing_secret_fails_loudly(db: psycopg.Connection[Any], vault_secrets: None) -> None:
    db.execute("delete from vault.secrets where name in ('worker_url', 'worker_secret')")
    with pytest.raises(psycopg.errors.RaiseException, match="worker_url"):
        db.execute(cron_command(db, "process-queue"))
    set_secret(db, "worker_url", "http://127.0.0.1:9")
    with pytest.raises(psycopg.errors.RaiseException, match="worker_secret"):
        db.execute(cron_command(db, "process-queue"))


def test_metrics_and_retention_commands_run(db: psycopg.Connection[Any]) -> None:
    db.execute(cron_command(db, "aggregate-queue-metrics"))
    db.execute(cron_command(db, "queue-retention"))


def test_rescheduling_replaces_instead_of_duplicating(db: psycopg.Connection[Any]) -> None:
    for _ in range(2):
        for path in CRON_MIGRATIONS:
            db.execute(path.read_text())
    rows = db.execute(
        "select jobname, count(*) as n from cron.job group by jobname having count(*) > 1"
    ).fetchall()
    assert rows == []
