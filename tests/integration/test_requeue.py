"""The DLQ tool (scripts/requeue.py, also `python -m worker dlq`) against the real database, over
both backends (psycopg and the PostgREST-compatible gateway): listing, showing, requeueing and
purging dead-lettered jobs, the dry-run default of bulk actions, and the exit codes for bad input
and no matches."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from psycopg.rows import DictRow

from tests.support.gateway import GatewayHandle
from worker.devstack.gateway import TEST_SECRET_KEY

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "requeue.py"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("requeue_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


requeue = _load_script()

Conn = psycopg.Connection[DictRow]


@pytest.fixture(params=["postgres", "rest", "rest-secret-key"])
def env(request: pytest.FixtureRequest, database_url: str) -> dict[str, str]:
    """The tool's environment for each backend (REST with the legacy JWT or a secret key)."""
    if request.param == "postgres":
        return {"DATABASE_URL": database_url}
    gateway: GatewayHandle = request.getfixturevalue("gateway")
    if request.param == "rest-secret-key":
        return {"SUPABASE_URL": gateway.base_url, "SUPABASE_SECRET_KEY": TEST_SECRET_KEY}
    return {"SUPABASE_URL": gateway.base_url, "SUPABASE_SERVICE_ROLE_KEY": gateway.service_role_jwt}


@pytest.fixture
def pg_env(database_url: str) -> dict[str, str]:
    """The psycopg backend only, for tests of input handling that no backend changes."""
    return {"DATABASE_URL": database_url}


@pytest.fixture
def job_type() -> str:
    """A job type no other test uses, so tests never see each other's jobs."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store_id() -> str:
    return str(uuid.uuid4())


class Run:
    """Runs the tool in-process and captures its output."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, env: dict[str, str], *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = requeue.main(list(argv), environ=env)
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(capsys)


@pytest.fixture
def svc(database_url: str) -> Iterator[Conn]:
    """An autocommit connection as service_role, as the worker calls the queue."""
    from psycopg.rows import dict_row

    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("set role service_role")
        yield conn


def make_dead(
    conn: Conn,
    job_type: str,
    count: int = 1,
    *,
    store_id: str | None = None,
    error: str = "smtp: rcpt: SMTP 550: mailbox unavailable",
    error_type: str = "permanent",
) -> list[str]:
    """Dead-letter `count` new jobs through the real queue functions; returns their ids."""
    ids = []
    for n in range(count):
        row = conn.execute(
            "select public.enqueue_job(%s, %s::jsonb, p_store_id => %s::uuid) as id",
            (job_type, json.dumps({"message_id": f"m-{n}"}), store_id),
        ).fetchone()
        assert row is not None
        ids.append(str(row["id"]))
    worker = f"w-{uuid.uuid4().hex[:6]}"
    claimed = conn.execute(
        "select id from public.dequeue_jobs(%s, %s, 300, %s)", (worker, count, [job_type])
    ).fetchall()
    assert sorted(str(r["id"]) for r in claimed) == sorted(ids)
    for job_id in ids:
        # A transient error on the last attempt dead-letters too; set the attempts so it does.
        if error_type == "transient":
            conn.execute(
                "update public.job_queue set max_attempts = attempt_count where id = %s", (job_id,)
            )
        status = conn.execute(
            "select public.fail_job(%s, %s, %s, %s) as s", (job_id, worker, error, error_type)
        ).fetchone()
        assert status is not None and status["s"] == "dead_letter"
    return ids


def age(db: Conn, ids: list[str], interval: str) -> None:
    """Pretend the jobs died `interval` ago (the only way to test ages without waiting)."""
    db.execute(
        "update public.job_queue set dead_lettered_at = now() - %s::interval where id = any(%s)",
        (interval, [uuid.UUID(i) for i in ids]),
    )


def job(db: Conn, job_id: str) -> dict[str, Any] | None:
    return db.execute("select * from public.job_queue where id = %s", (job_id,)).fetchone()


def status(db: Conn, job_id: str) -> str | None:
    row = job(db, job_id)
    return None if row is None else str(row["status"])


def listed_ids(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines()[1:]]


# -- list ---------------------------------------------------------------------------------------


def test_list_prints_a_table_of_the_matching_jobs_newest_first(
    run: Run, env: dict[str, str], svc: Conn, db: Conn, job_type: str, store_id: str
) -> None:
    older, newer = make_dead(svc, job_type, 2, store_id=store_id)
    age(db, [older], "3 hours")

    code, out, err = run(env, "list", "--job-type", job_type)

    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ID", "TYPE", "STORE", "ATTEMPTS"]
    assert listed_ids(out) == [newer, older]
    cells = lines[2].split(None, 6)
    assert cells[:6] == [older, job_type, store_id[:8], "1/5", "permanent", "3h"]
    assert cells[6] == "smtp: rcpt: SMTP 550: mailbox unavailable"


def test_list_filters_by_store_error_type_age_and_limit(
    run: Run, env: dict[str, str], svc: Conn, db: Conn, job_type: str, store_id: str
) -> None:
    mine = make_dead(svc, job_type, 2, store_id=store_id)
    other_store = make_dead(svc, job_type, 1, store_id=str(uuid.uuid4()))
    transient = make_dead(svc, job_type, 1, store_id=store_id, error_type="transient")
    age(db, [mine[0], transient[0]], "2 days")

    def ids(*argv: str) -> set[str]:
        code, out, err = run(env, "list", "--job-type", job_type, *argv)
        assert code == 0, err
        return set(listed_ids(out))

    assert ids() == {*mine, *other_store, *transient}
    assert ids("--store", store_id) == {*mine, *transient}
    assert ids("--error-type", "transient") == set(transient)
    assert ids("--store", store_id, "--error-type", "permanent") == set(mine)
    assert ids("--older-than", "1d") == {mine[0], transient[0]}
    assert ids("--older-than", "1d", "--error-type", "permanent") == {mine[0]}
    assert len(ids("--limit", "2")) == 2


def test_list_json_is_parseable_with_ages(
    run: Run, env: dict[str, str], svc: Conn, db: Conn, job_type: str
) -> None:
    [job_id] = make_dead(svc, job_type)
    age(db, [job_id], "90 minutes")

    code, out, _ = run(env, "list", "--job-type", job_type, "--json")

    assert code == 0
    [row] = json.loads(out)
    assert row["id"] == job_id
    assert row["status"] == "dead_letter"
    assert row["payload"] == {"message_id": "m-0"}
    assert 90 * 60 <= row["dead_for_seconds"] < 100 * 60


def test_list_with_no_matches_exits_3(run: Run, env: dict[str, str], job_type: str) -> None:
    code, out, err = run(env, "list", "--job-type", job_type)
    assert (code, out) == (3, "")
    assert "no dead-letter jobs match" in err

    code, out, _ = run(env, "list", "--job-type", job_type, "--json")
    assert code == 3
    assert json.loads(out) == []


# -- show ---------------------------------------------------------------------------------------


def test_show_prints_payload_attempts_error_and_history(
    run: Run, env: dict[str, str], svc: Conn, job_type: str
) -> None:
    [job_id] = make_dead(svc, job_type, error="imap: login: AUTHENTICATIONFAILED\nsecond line")

    code, out, err = run(env, "show", job_id)

    assert code == 0, err
    assert f"id               {job_id}" in out
    assert "status           dead_letter" in out
    assert "attempts         1 of 5" in out
    assert "error type       permanent" in out
    assert "last error:\n  imap: login: AUTHENTICATIONFAILED\n  second line" in out
    assert '"message_id": "m-0"' in out
    assert "last claimed     20" in out  # the claim is on the row: when its attempt began
    history = out.split("history (2 events):\n", 1)[1].splitlines()
    assert [line.split()[1] for line in history] == ["job.enqueued", "job.dead_lettered"]
    assert "error=imap: login: AUTHENTICATIONFAILED second line" in history[1]
    assert "attempt=1" in history[1] and "worker_id=" in history[1]


def test_show_json_has_the_job_and_its_events(
    run: Run, env: dict[str, str], svc: Conn, job_type: str
) -> None:
    [job_id] = make_dead(svc, job_type)

    code, out, _ = run(env, "show", job_id, "--json")

    assert code == 0
    data = json.loads(out)
    assert data["job"]["id"] == job_id
    assert data["job"]["attempt_count"] == 1
    assert data["job"]["started_at"]  # the claim is on the row
    assert [e["event_type"] for e in data["events"]] == ["job.enqueued", "job.dead_lettered"]
    assert data["events"][1]["detail"]["error_type"] == "permanent"


def test_show_unknown_id_exits_1_and_bad_id_exits_2(run: Run, pg_env: dict[str, str]) -> None:
    code, out, err = run(pg_env, "show", UNKNOWN_ID)
    assert (code, out) == (1, "")
    assert f"{UNKNOWN_ID}: no such job" in err

    code, _, err = run(pg_env, "show", "not-a-uuid")
    assert code == 2
    assert "bad id 'not-a-uuid': not a UUID" in err


# -- requeue ------------------------------------------------------------------------------------


def test_requeue_ids_moves_them_to_pending_with_fresh_attempts(
    run: Run, env: dict[str, str], svc: Conn, db: Conn, job_type: str
) -> None:
    first, second, untouched = make_dead(svc, job_type, 3)

    code, out, err = run(env, "requeue", first, second)

    assert code == 0, err
    assert out.splitlines() == [f"requeued {first}", f"requeued {second}"]
    for job_id in (first, second):
        row = job(db, job_id)
        assert row is not None
        assert (row["status"], row["attempt_count"], row["dead_lettered_at"]) == (
            "pending",
            0,
            None,
        )
    untouched_row = job(db, untouched)
    assert untouched_row is not None and untouched_row["status"] == "dead_letter"
    event = db.execute(
        "select detail from public.events where job_id = %s and event_type = 'job.requeued'",
        (first,),
    ).fetchone()
    assert event is not None and event["detail"]["reset_attempts"] is True


def test_requeue_keep_attempts_keeps_the_attempt_count(
    run: Run, env: dict[str, str], svc: Conn, db: Conn, job_type: str
) -> None:
    [job_id] = make_dead(svc, job_type)

    code, _, _ = run(env, "requeue", job_id, "--keep-attempts")

    assert code == 0
    row = job(db, job_id)
    assert row is not None and (row["status"], row["attempt_count"]) == ("pending", 1)


def test_requeue_reports_ids_not_in_the_dlq_and_exits_1_after_doing_the_rest(
    run: Run, env: dict[str, str], svc: Conn, db: Conn, job_type: str
) -> None:
    dead, already = make_dead(svc, job_type, 2)
    assert run(env, "requeue", already)[0] == 0

    code, out, err = run(env, "requeue", already, dead, UNKNOWN_ID)

    assert code == 1
    assert out.splitlines() == [f"requeued {dead}"]
    assert f"{already}: not in the dead-letter queue (status pending)" in err
    assert f"{UNKNOWN_ID}: no such job" in err
    row = job(db, dead)
    assert row is not None and row["status"] == "pending"


def test_a_dead_fetch_job_stays_dead_while_its_store_has_a_live_one(
    run: Run, pg_env: dict[str, str], svc: Conn, db: Conn, store_id: str
) -> None:
    # A store has one live fetch job at most (decision 0021): requeueing a dead one beside it
    # is refused with the reason, and the rest of the command goes on.
    dead = svc.execute(
        "insert into public.job_queue (job_type, store_id, status, dead_lettered_at)"
        " values ('fetch_mailbox', %s, 'dead_letter', now()) returning id",
        (store_id,),
    ).fetchone()
    live = svc.execute(
        "insert into public.job_queue (job_type, store_id) values ('fetch_mailbox', %s)"
        " returning id",
        (store_id,),
    ).fetchone()
    assert dead is not None and live is not None
    try:
        code, out, err = run(pg_env, "requeue", str(dead["id"]))

        assert code == 1 and out == ""
        assert "its store already has a fetch job waiting or running" in err
        assert status(db, str(dead["id"])) == "dead_letter"
        db.execute("delete from public.job_queue where id = %s", (live["id"],))
        assert run(pg_env, "requeue", str(dead["id"]))[0] == 0
        assert status(db, str(dead["id"])) == "pending"
    finally:
        db.execute("delete from public.job_queue where store_id = %s", (store_id,))


def test_requeue_all_is_a_dry_run_until_yes(
    run: Run, env: dict[str, str], svc: Conn, db: Conn, job_type: str, store_id: str
) -> None:
    chosen = make_dead(svc, job_type, 2, store_id=store_id)
    other = make_dead(svc, job_type, 1, store_id=str(uuid.uuid4()))

    code, out, err = run(env, "requeue", "--all", "--job-type", job_type, "--store", store_id)

    assert code == 0, err
    assert set(listed_ids(out)) == set(chosen)
    assert "dry run: 2 job(s) would be requeued; add --yes" in err
    assert {status(db, i) for i in chosen} == {"dead_letter"}

    code, out, err = run(
        env, "requeue", "--all", "--job-type", job_type, "--store", store_id, "--yes"
    )

    assert code == 0, err
    assert sorted(out.splitlines()) == sorted(f"requeued {i}" for i in chosen)
    assert "requeued 2 of 2 job(s)" in err
    assert {status(db, i) for i in chosen} == {"pending"}
    assert status(db, other[0]) == "dead_letter"


def test_requeue_all_with_no_matches_exits_3(run: Run, env: dict[str, str], job_type: str) -> None:
    code, out, err = run(env, "requeue", "--all", "--job-type", job_type, "--yes")
    assert (code, out) == (3, "")
    assert "no dead-letter jobs match" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["requeue"], "give job ids, or --all"),
        (["requeue", UNKNOWN_ID, "--all"], "give job ids, or --all"),
        (["requeue", UNKNOWN_ID, "--job-type", "x"], "filters apply to --all only"),
        (["requeue", UNKNOWN_ID, "--yes"], "--yes is for --all"),
        (["requeue", UNKNOWN_ID, "12345"], "bad id '12345': not a UUID"),
        (["requeue", "--all", "--store", "shop-1"], "bad id 'shop-1'"),
        (["requeue", "--all", "--older-than", "2 hours"], "bad duration '2 hours'"),
        (["list", "--limit", "0"], "must be a positive integer"),
        (["list", "--error-type", "fatal"], "invalid choice: 'fatal'"),
        (["purge", "--yes"], "the following arguments are required: --older-than"),
        (["purge", "--older-than", "7"], "bad duration '7'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_usage_errors_exit_2_and_change_nothing(
    run: Run,
    pg_env: dict[str, str],
    svc: Conn,
    db: Conn,
    job_type: str,
    argv: list[str],
    message: str,
) -> None:
    [job_id] = make_dead(svc, job_type)

    code, out, err = run(pg_env, *argv)

    assert (code, out) == (2, "")
    assert message in err
    row = job(db, job_id)
    assert row is not None and row["status"] == "dead_letter"


def test_missing_database_configuration_exits_2(run: Run) -> None:
    code, _, err = run({}, "list")
    assert code == 2
    assert "no database configured" in err


# -- purge --------------------------------------------------------------------------------------


def test_purge_deletes_only_old_matching_jobs_after_a_dry_run_and_keeps_events(
    run: Run, env: dict[str, str], svc: Conn, db: Conn, job_type: str
) -> None:
    old = make_dead(svc, job_type, 2)
    recent = make_dead(svc, job_type, 1)
    age(db, old, "8 days")

    code, out, err = run(env, "purge", "--older-than", "7d", "--job-type", job_type)

    assert code == 0, err
    assert set(listed_ids(out)) == set(old)
    assert "dry run: 2 job(s) would be purged; add --yes" in err
    assert all(job(db, i) is not None for i in old)

    code, out, err = run(env, "purge", "--older-than", "7d", "--job-type", job_type, "--yes")

    assert code == 0, err
    assert "purged 2 of 2 job(s)" in err
    assert all(job(db, i) is None for i in old)
    assert job(db, recent[0]) is not None
    events = db.execute(
        "select count(*) as n from public.events where job_id = any(%s)",
        ([uuid.UUID(i) for i in old],),
    ).fetchone()
    assert events is not None and events["n"] == 4  # enqueued, dead_lettered each

    code, _, err = run(env, "purge", "--older-than", "7d", "--job-type", job_type, "--yes")
    assert code == 3
    assert "no dead-letter jobs match" in err


def test_purge_never_touches_jobs_that_are_not_dead(
    run: Run, pg_env: dict[str, str], svc: Conn, db: Conn, job_type: str
) -> None:
    [job_id] = make_dead(svc, job_type)
    age(db, [job_id], "30 days")
    assert run(pg_env, "requeue", job_id)[0] == 0

    code, _, _ = run(pg_env, "purge", "--older-than", "1d", "--job-type", job_type, "--yes")

    assert code == 3
    row = job(db, job_id)
    assert row is not None and row["status"] == "pending"


# -- the script itself --------------------------------------------------------------------------


def test_runs_as_a_script_with_the_environment(database_url: str, svc: Conn, job_type: str) -> None:
    [job_id] = make_dead(svc, job_type)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "SUPABASE_"))}
    env["DATABASE_URL"] = database_url

    listed = subprocess.run(
        [sys.executable, str(SCRIPT), "list", "--job-type", job_type],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    missing = subprocess.run(
        [sys.executable, str(SCRIPT), "requeue", "--all", "--job-type", f"{job_type}_none"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].startswith(job_id)
    assert missing.returncode == 3
    assert "no dead-letter jobs match" in missing.stderr


def test_runs_in_the_package_as_python_m_worker_dlq(
    database_url: str, svc: Conn, job_type: str
) -> None:
    [job_id] = make_dead(svc, job_type)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "SUPABASE_"))}
    env["DATABASE_URL"] = database_url

    listed = subprocess.run(
        [sys.executable, "-m", "worker", "dlq", "list", "--job-type", job_type],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    usage = subprocess.run(
        [sys.executable, "-m", "worker", "dlq", "requeue", job_id, "--yes"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].startswith(job_id)
    assert usage.returncode == 2
    assert "python -m worker dlq requeue: error: --yes is for --all" in usage.stderr
