"""scripts/local-db gives a database that behaves like Supabase where our code depends on it."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row

from tests.support.postgres import run_local_db

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[DictRow]

# Upper bound for waiting on pg_cron (1.4 schedules by the minute): a guard against hanging,
# not a timing assertion.
CRON_WAIT_LIMIT = 150  # seconds


# --- roles and auth ------------------------------------------------------------------------------


def test_api_roles_match_supabase(db: Conn) -> None:
    rows = db.execute(
        "select rolname, rolcanlogin, rolinherit, rolbypassrls from pg_roles"
        " where rolname in ('anon', 'authenticated', 'service_role', 'authenticator')"
        " order by rolname"
    ).fetchall()
    by_name = {r["rolname"]: r for r in rows}
    assert set(by_name) == {"anon", "authenticated", "service_role", "authenticator"}
    assert by_name["service_role"]["rolbypassrls"] is True
    assert by_name["anon"]["rolbypassrls"] is False
    assert by_name["authenticated"]["rolbypassrls"] is False
    assert by_name["authenticator"]["rolcanlogin"] is True
    assert by_name["authenticator"]["rolinherit"] is False
    for api_role in ("anon", "authenticated", "service_role"):
        assert by_name[api_role]["rolcanlogin"] is False
        member = db.execute(
            "select pg_has_role('authenticator', %s, 'member') as m", (api_role,)
        ).fetchone()
        assert member is not None and member["m"] is True


def test_authenticator_logs_in_and_switches_role(database_url: str) -> None:
    params = conninfo_to_dict(database_url)
    params.update(user="authenticator", password="postgres")
    with psycopg.connect(make_conninfo(**params), autocommit=True) as conn:
        conn.execute("set role anon")
        row = conn.execute("select current_user").fetchone()
        assert row == ("anon",)


def test_default_privileges_grant_new_public_tables_to_api_roles(db: Conn) -> None:
    table = f"h1_grants_{uuid.uuid4().hex[:12]}"
    db.execute(sql.SQL("create table public.{} (id int)").format(sql.Identifier(table)))
    try:
        for api_role in ("anon", "authenticated", "service_role"):
            row = db.execute(
                "select has_table_privilege(%s, %s, 'select, insert, update, delete') as ok",
                (api_role, f"public.{table}"),
            ).fetchone()
            assert row is not None and row["ok"] is True, api_role
    finally:
        db.execute(sql.SQL("drop table public.{}").format(sql.Identifier(table)))


def test_auth_helpers_read_request_jwt_claims(db: Conn) -> None:
    user_id = uuid.uuid4()
    claims = {"sub": str(user_id), "role": "authenticated", "email": "owner@example.com"}
    with db.transaction():
        db.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        row = db.execute(
            "select auth.uid() as uid, auth.role() as role, auth.jwt() as jwt,"
            " auth.email() as email"
        ).fetchone()
    assert row == {"uid": user_id, "role": "authenticated", "jwt": claims,
                   "email": "owner@example.com"}


def test_auth_uid_reads_legacy_claim_settings(db: Conn) -> None:
    user_id = uuid.uuid4()
    with db.transaction():
        db.execute("select set_config('request.jwt.claim.sub', %s, true)", (str(user_id),))
        db.execute("select set_config('request.jwt.claim.role', 'service_role', true)")
        row = db.execute("select auth.uid() as uid, auth.role() as role").fetchone()
    assert row == {"uid": user_id, "role": "service_role"}


def test_auth_uid_is_null_without_claims(db: Conn) -> None:
    row = db.execute("select auth.uid() as uid, auth.jwt() as jwt").fetchone()
    assert row == {"uid": None, "jwt": None}


def test_auth_users_accepts_a_user(db: Conn) -> None:
    user_id = uuid.uuid4()
    db.execute("insert into auth.users (id, email) values (%s, %s)",
               (user_id, f"{user_id}@example.com"))
    row = db.execute("select email, created_at from auth.users where id = %s",
                     (user_id,)).fetchone()
    assert row is not None and row["email"] == f"{user_id}@example.com"
    assert row["created_at"] is not None


# --- vault ---------------------------------------------------------------------------------------


def test_vault_round_trip_encrypts_at_rest(db: Conn) -> None:
    name = f"h1-secret-{uuid.uuid4()}"
    row = db.execute("select vault.create_secret('imap-pass-1', %s, 'IMAP password') as id",
                     (name,)).fetchone()
    assert row is not None
    secret_id = row["id"]

    stored = db.execute("select secret from vault.secrets where id = %s", (secret_id,)).fetchone()
    assert stored is not None and "imap-pass-1" not in stored["secret"]

    decrypted = db.execute(
        "select name, description, decrypted_secret from vault.decrypted_secrets where id = %s",
        (secret_id,),
    ).fetchone()
    assert decrypted == {"name": name, "description": "IMAP password",
                         "decrypted_secret": "imap-pass-1"}

    db.execute("select vault.update_secret(%s, 'imap-pass-2')", (secret_id,))
    after = db.execute(
        "select name, description, decrypted_secret from vault.decrypted_secrets where id = %s",
        (secret_id,),
    ).fetchone()
    assert after == {"name": name, "description": "IMAP password",
                     "decrypted_secret": "imap-pass-2"}

    db.execute("select vault.update_secret(%s, new_description => 'rotated')", (secret_id,))
    described = db.execute(
        "select description, decrypted_secret from vault.decrypted_secrets where id = %s",
        (secret_id,),
    ).fetchone()
    assert described == {"description": "rotated", "decrypted_secret": "imap-pass-2"}


def test_vault_names_are_unique(db: Conn) -> None:
    name = f"h1-unique-{uuid.uuid4()}"
    db.execute("select vault.create_secret('a', %s)", (name,))
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute("select vault.create_secret('b', %s)", (name,))


@pytest.mark.parametrize("api_role", ["anon", "authenticated"])
@pytest.mark.parametrize(
    "statement",
    [
        "select decrypted_secret from vault.decrypted_secrets",
        "select secret from vault.secrets",
        "select key from vault._root_key",
        "select vault.create_secret('x')",
    ],
)
def test_vault_is_closed_to_api_roles(db: Conn, api_role: str, statement: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege), db.transaction():
        db.execute(sql.SQL("set local role {}").format(sql.Identifier(api_role)))
        db.execute(statement)


# --- pg_net --------------------------------------------------------------------------------------


@dataclass
class HttpRecorder:
    """A loopback HTTP server that records requests; /slow blocks until released."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    release_slow: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def http_server() -> Iterator[HttpRecorder]:
    recorder = HttpRecorder(url="")

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            recorder.requests.append({
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": self.rfile.read(length).decode() if length else "",
            })
            if self.path.startswith("/slow"):
                recorder.release_slow.wait(CRON_WAIT_LIMIT)
            payload = json.dumps({"ok": True, "path": self.path}).encode()
            self.send_response(201 if self.command == "POST" else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Recorder", "yes")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = _record

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        recorder.release_slow.set()
        server.shutdown()
        server.server_close()


SCRATCH_DROP_WAIT_LIMIT = 10.0  # seconds

# pg_net sends after commit, from its worker: callers poll for the response by request id.
PG_NET_WAIT_LIMIT = 15.0  # seconds; a guard against hanging, not a timing assertion


def _response(db: Conn, request_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + PG_NET_WAIT_LIMIT
    while True:
        row = db.execute(
            "select * from net._http_response where id = %s", (request_id,)
        ).fetchone()
        if row is not None:
            return dict(row)
        assert time.monotonic() < deadline, f"no response recorded for request {request_id}"
        time.sleep(0.05)


def test_pg_net_extension_is_created_by_its_real_name(db: Conn) -> None:
    db.execute("create extension if not exists pg_net")
    row = db.execute("select count(*) as n from pg_extension where extname = 'pg_net'").fetchone()
    assert row == {"n": 1}


def test_pg_net_http_post_really_posts_and_records_the_response(
    db: Conn, http_server: HttpRecorder
) -> None:
    db.execute("create extension if not exists pg_net")
    row = db.execute(
        "select net.http_post(%s, body => %s::jsonb, params => '{\"run\": \"fetch\"}',"
        " headers => '{\"Content-Type\": \"application/json\", \"X-Worker-Secret\": \"t0k\"}')"
        " as id",
        (f"{http_server.url}/trigger", json.dumps({"store": "s1"})),
    ).fetchone()
    assert row is not None
    request_id = row["id"]

    response = _response(db, request_id)
    assert len(http_server.requests) == 1
    sent = http_server.requests[0]
    assert sent["method"] == "POST"
    assert sent["path"] == "/trigger?run=fetch"
    assert json.loads(sent["body"]) == {"store": "s1"}
    assert sent["headers"]["x-worker-secret"] == "t0k"
    assert sent["headers"]["content-type"] == "application/json"

    assert response["status_code"] == 201
    assert response["timed_out"] is False
    assert response["error_msg"] is None
    assert response["content_type"] == "application/json"
    assert response["headers"]["X-Recorder"] == "yes"
    assert json.loads(response["content"]) == {"ok": True, "path": "/trigger?run=fetch"}
    queued = db.execute("select count(*) as n from net.http_request_queue where id = %s",
                        (request_id,)).fetchone()
    assert queued == {"n": 0}


def test_pg_net_http_post_defaults_the_json_content_type(
    db: Conn, http_server: HttpRecorder
) -> None:
    db.execute("create extension if not exists pg_net")
    row = db.execute("select net.http_post(%s, headers => '{\"X-A\": \"1\"}') as id",
                     (f"{http_server.url}/defaults",)).fetchone()
    assert row is not None
    _response(db, row["id"])
    sent = http_server.requests[0]
    assert sent["headers"]["content-type"] == "application/json"
    assert sent["body"] == "{}"


def test_pg_net_http_get_records_the_response(db: Conn, http_server: HttpRecorder) -> None:
    db.execute("create extension if not exists pg_net")
    row = db.execute("select net.http_get(%s, params => '{\"q\": \"a b\"}') as id",
                     (f"{http_server.url}/health",)).fetchone()
    assert row is not None
    assert _response(db, row["id"])["status_code"] == 200
    assert http_server.requests[0]["method"] == "GET"
    assert http_server.requests[0]["path"] == "/health?q=a+b"


class RollBack(Exception):
    """Raised inside a transaction block to roll it back."""


def test_pg_net_sends_only_after_commit_and_never_for_a_rollback(
    db: Conn, http_server: HttpRecorder
) -> None:
    db.execute("create extension if not exists pg_net")
    with pytest.raises(RollBack), db.transaction():
        db.execute("select net.http_get(%s)", (f"{http_server.url}/rolled-back",))
        raise RollBack
    with db.transaction():
        row = db.execute("select net.http_get(%s) as id", (f"{http_server.url}/committed",))
        request = row.fetchone()
        assert request is not None
        # Inside the caller's transaction the request is only queued.
        time.sleep(0.5)
        assert http_server.requests == []
        assert db.execute("select count(*) as n from net._http_response where id = %s",
                          (request["id"],)).fetchone() == {"n": 0}
    assert _response(db, request["id"])["status_code"] == 200
    # The rolled-back request was queued before the committed one, so it would be gone by now.
    assert [r["path"] for r in http_server.requests] == ["/committed"]


def test_pg_net_worker_deletes_responses_older_than_its_ttl(db: Conn) -> None:
    db.execute("create extension if not exists pg_net")
    # Negative ids: pg_net's request ids count up from 1, so these belong to no request.
    old, recent = (-(uuid.uuid4().int % 10**12) - 1 for _ in range(2))
    db.execute(
        "insert into net._http_response (id, status_code, created) values"
        " (%s, 200, now() - interval '6 hours 1 minute'), (%s, 200, now() - interval '5 hours')",
        (old, recent),
    )
    deadline = time.monotonic() + PG_NET_WAIT_LIMIT
    while db.execute("select count(*) as n from net._http_response where id = %s",
                     (old,)).fetchone() != {"n": 0}:
        assert time.monotonic() < deadline, "the response past pg_net.ttl (6 hours) was kept"
        time.sleep(0.05)
    assert db.execute("select count(*) as n from net._http_response where id = %s",
                      (recent,)).fetchone() == {"n": 1}
    db.execute("delete from net._http_response where id = %s", (recent,))


def test_pg_net_records_a_timeout(db: Conn, http_server: HttpRecorder) -> None:
    db.execute("create extension if not exists pg_net")
    row = db.execute("select net.http_post(%s, timeout_milliseconds => 300) as id",
                     (f"{http_server.url}/slow",)).fetchone()
    assert row is not None
    response = _response(db, row["id"])
    http_server.release_slow.set()
    assert response["timed_out"] is True
    assert response["status_code"] is None
    assert "Timeout of 300 ms" in response["error_msg"]


def test_pg_net_records_a_connection_error(db: Conn) -> None:
    db.execute("create extension if not exists pg_net")
    # Port 9 (discard) on loopback: nothing listens there on a test machine.
    row = db.execute("select net.http_get('http://127.0.0.1:9/') as id").fetchone()
    assert row is not None
    response = _response(db, row["id"])
    assert response["timed_out"] is False
    assert response["status_code"] is None
    assert response["error_msg"]


@pytest.mark.parametrize("api_role", ["anon", "authenticated"])
def test_pg_net_is_closed_to_api_roles(db: Conn, api_role: str) -> None:
    db.execute("create extension if not exists pg_net")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), db.transaction():
        db.execute(sql.SQL("set local role {}").format(sql.Identifier(api_role)))
        db.execute("select net.http_get('http://127.0.0.1:9/')")


# --- migrations ----------------------------------------------------------------------------------


@dataclass
class Scratch:
    """A scratch database on the test cluster, prepared by scripts/local-db."""

    env: dict[str, str]
    migrations: Path

    def run(self, *args: str) -> str:
        return run_local_db(self.env, *args)


@pytest.fixture
def scratch(database_url: str, db: Conn, tmp_path: Path) -> Iterator[Scratch]:
    params = conninfo_to_dict(database_url)
    # cron.database_name is readable by superusers only (postgres is not one); the launcher's
    # session shows the same database to everyone.
    cron_row = db.execute(
        "select datname as d from pg_stat_activity where backend_type = 'pg_cron launcher'"
    ).fetchone()
    name = f"h1_scratch_{uuid.uuid4().hex[:12]}"
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    env = dict(os.environ)
    env.update(
        PGHOST=str(params.get("host", "127.0.0.1")),
        PGPORT=str(params.get("port", "5432")),
        PGUSER="postgres",
        PGDATABASE=name,
        MIGRATIONS_DIR=str(migrations),
        # Keep pg_cron on the shared test database so the cluster is not restarted under
        # other tests.
        CRON_DATABASE=str(cron_row["d"] if cron_row else "postgres"),
    )
    try:
        yield Scratch(env=env, migrations=migrations)
    finally:
        drop = sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        # postgres (not a superuser) may not end another role's session: a session of the
        # platform superuser that local-db just closed can still be exiting, so wait it out.
        deadline = time.monotonic() + SCRATCH_DROP_WAIT_LIMIT
        while True:
            try:
                db.execute(drop)
                break
            except psycopg.errors.InsufficientPrivilege:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _connect(url: str) -> Conn:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


def test_migrations_apply_in_order_once_and_are_recorded(scratch: Scratch) -> None:
    (scratch.migrations / "20990101000002_second.sql").write_text(
        "insert into applied (name) values ('second');\n"
        "create function add_one(i int) returns int language plpgsql as $$\n"
        "begin return i + 1; end; $$;\n"
    )
    (scratch.migrations / "20990101000001_first.sql").write_text(
        "-- the log every later migration writes to\n"
        "create table applied (name text, at timestamptz default clock_timestamp());\n"
        "insert into applied (name) values ('first; with a semicolon')"
    )
    (scratch.migrations / "README.md").write_text("not a migration")

    url = scratch.run()
    with _connect(url) as conn:
        assert [r["name"] for r in conn.execute("select name from applied order by at")] == [
            "first; with a semicolon", "second"]
        recorded = conn.execute(
            "select version, name, statements from supabase_migrations.schema_migrations"
            " order by version"
        ).fetchall()
        assert [(r["version"], r["name"]) for r in recorded] == [
            ("20990101000001", "first"), ("20990101000002", "second")]
        assert len(recorded[0]["statements"]) == 2
        assert recorded[0]["statements"][1] == (
            "insert into applied (name) values ('first; with a semicolon')")
        assert len(recorded[1]["statements"]) == 2
        assert recorded[1]["statements"][1].endswith("begin return i + 1; end; $$")
        assert conn.execute("select add_one(1) as v").fetchone() == {"v": 2}

    (scratch.migrations / "20990101000003_third.sql").write_text(
        "insert into applied (name) values ('third');")
    assert scratch.run() == url
    with _connect(url) as conn:
        names = [r["name"] for r in conn.execute("select name from applied order by at")]
        assert names == ["first; with a semicolon", "second", "third"]

    assert scratch.run() == url
    with _connect(url) as conn:
        count = conn.execute("select count(*) as n from applied").fetchone()
        assert count == {"n": 3}


def test_failed_migration_leaves_no_trace_and_stops_the_run(scratch: Scratch) -> None:
    (scratch.migrations / "20990101000001_ok.sql").write_text("create table ok_table (id int);")
    (scratch.migrations / "20990101000002_broken.sql").write_text(
        "create table half_done (id int);\nselect no_such_function();\n")
    (scratch.migrations / "20990101000003_later.sql").write_text("create table later (id int);")

    with pytest.raises(RuntimeError, match=r"20990101000002_broken\.sql"):
        scratch.run()

    url = make_conninfo(
        host=scratch.env["PGHOST"], port=scratch.env["PGPORT"], user="postgres",
        password="postgres", dbname=scratch.env["PGDATABASE"])
    with _connect(url) as conn:
        tables = {r["t"] for r in conn.execute(
            "select tablename as t from pg_tables where schemaname = 'public'")}
        assert tables == {"ok_table"}
        versions = [r["version"] for r in conn.execute(
            "select version from supabase_migrations.schema_migrations order by version")]
        assert versions == ["20990101000001"]


@pytest.mark.parametrize(
    "statement",
    [
        "create extension if not exists dblink",  # not one the platform provides
        "alter role postgres superuser",
        "create event trigger t on ddl_command_end execute function pg_catalog.now()",
        "copy (select 1) to program 'true'",
    ],
)
def test_a_migration_needing_a_superuser_fails_as_on_supabase(
    scratch: Scratch, statement: str
) -> None:
    # Supabase applies migrations as postgres, which is not a superuser (supabase/postgres'
    # demote-postgres migration); the local stack must refuse the same statements.
    (scratch.migrations / "20990101000001_superuser.sql").write_text(statement + ";\n")
    with pytest.raises(RuntimeError, match=r"20990101000001_superuser\.sql"):
        scratch.run()


def test_postgres_has_supabases_attributes_not_a_superusers(db: Conn) -> None:
    row = db.execute(
        "select current_user as u, rolsuper, rolcreaterole, rolcreatedb, rolreplication,"
        " rolbypassrls, rolcanlogin from pg_roles where rolname = current_user"
    ).fetchone()
    assert row == {
        "u": "postgres", "rolsuper": False, "rolcreaterole": True, "rolcreatedb": True,
        "rolreplication": True, "rolbypassrls": True, "rolcanlogin": True,
    }
    rows = db.execute(
        "select extname, extowner::regrole::text as owner from pg_extension"
        " where extname in ('pg_net', 'supabase_vault', 'pgtap')"
    ).fetchall()
    owners = {r["extname"]: r["owner"] for r in rows}
    # Created by the platform, as supautils does for postgres on Supabase.
    assert owners == dict.fromkeys(("pg_net", "supabase_vault", "pgtap"), "supabase_admin")
    row = db.execute(
        "select n.nspname from pg_extension e join pg_namespace n on n.oid = e.extnamespace"
        " where e.extname = 'pg_net'"
    ).fetchone()
    assert row == {"nspname": "extensions"}  # as Supabase creates it; its objects are in net


def test_fresh_recreates_the_database(scratch: Scratch) -> None:
    (scratch.migrations / "20990101000001_t.sql").write_text("create table t (id int);")
    url = scratch.run()
    with _connect(url) as conn:
        conn.execute("insert into t values (1)")
    assert scratch.run("--fresh") == url
    with _connect(url) as conn:
        assert conn.execute("select count(*) as n from t").fetchone() == {"n": 0}
        extensions = {r["extname"] for r in conn.execute("select extname from pg_extension")}
        assert {"pgtap", "plpgsql_check", "supabase_vault", "pgcrypto"} <= extensions


def test_test_tooling_extensions_are_enabled(db: Conn) -> None:
    rows = db.execute(
        "select e.extname, n.nspname from pg_extension e"
        " join pg_namespace n on n.oid = e.extnamespace"
        " where e.extname in ('pgtap', 'plpgsql_check')"
    ).fetchall()
    assert {(r["extname"], r["nspname"]) for r in rows} == {
        ("pgtap", "extensions"), ("plpgsql_check", "extensions")}
    # Supabase's search path reaches extensions without qualification, as pgTAP files expect.
    with db.transaction(force_rollback=True):
        db.execute("select plan(1)")
        assert db.execute("select ok(true) as tap").fetchone() == {"tap": "ok 1"}


# --- pg_cron -------------------------------------------------------------------------------------


def test_pg_cron_runs_a_job_without_a_password(db: Conn, database_url: str) -> None:
    db.execute("create extension if not exists pg_cron")
    channel = f"h1_cron_{uuid.uuid4().hex[:12]}"
    job_name = channel
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(sql.SQL("listen {}").format(sql.Identifier(channel)))
        row = db.execute(
            "select cron.schedule(%s, '* * * * *', %s) as id",
            (job_name, f"select pg_notify('{channel}', 'ran')"),
        ).fetchone()
        assert row is not None
        job_id = row["id"]
        try:
            notices = list(listener.notifies(timeout=CRON_WAIT_LIMIT, stop_after=1))
            assert [(n.channel, n.payload) for n in notices] == [(channel, "ran")]
            details = db.execute(
                "select status, return_message from cron.job_run_details"
                " where jobid = %s and status in ('succeeded', 'failed')",
                (job_id,),
            ).fetchall()
            # The run is marked finished just after the command commits; wait for that too.
            for _ in range(100):
                if details:
                    break
                db.execute("select pg_sleep(0.1)")
                details = db.execute(
                    "select status, return_message from cron.job_run_details"
                    " where jobid = %s and status in ('succeeded', 'failed')",
                    (job_id,),
                ).fetchall()
            assert details and details[0]["status"] == "succeeded", details
        finally:
            db.execute("select cron.unschedule(%s)", (job_id,))
