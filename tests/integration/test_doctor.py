"""`python -m worker doctor` against the local stack: a deployment set up right passes every
check, and each broken setting fails with its fix."""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
from werkzeug.serving import make_server

from worker import __main__ as cli
from worker import doctor
from worker.app import create_app
from worker.config import load_settings
from worker.devstack.gateway import TEST_SECRET_KEY, RpcGateway, authenticator_url

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECRET = "doctor-test-secret-0123456789abcdef"


class QuietDb:
    def ping(self) -> bool:
        return True

    def queue_stats(self) -> Mapping[str, Any]:
        return {"jobs": [], "oldest_due_seconds": {}, "breakers": []}


class QuietServices:
    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.db = QuietDb()
        self.runners: dict[str, Any] = {}

    def close(self) -> None:
        pass


@pytest.fixture
def worker_url(database_url: str) -> Iterator[str]:
    settings = load_settings({"DATABASE_URL": database_url, "WORKER_SECRET": SECRET})
    app = create_app(settings, services=QuietServices(settings))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@pytest.fixture
def vault(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn
        conn.execute("delete from vault.secrets where name in ('worker_url', 'worker_secret')")


def set_secret(conn: psycopg.Connection[Any], name: str, value: str) -> None:
    conn.execute("delete from vault.secrets where name = %s", (name,))
    conn.execute("select vault.create_secret(%s, %s)", (value, name))


def run_doctor(
    database_url: str, capsys: pytest.CaptureFixture[str], *args: str, secret: str = SECRET
) -> tuple[int, str]:
    env = {"DATABASE_URL": database_url, "WORKER_SECRET": secret, "DB_TIMEOUT_SECONDS": "3"}
    code = cli.main(["doctor", *args], environ=env)
    return code, capsys.readouterr().out


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_deployment_set_up_right_passes(
    database_url: str, worker_url: str, vault: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    set_secret(vault, "worker_url", worker_url)
    set_secret(vault, "worker_secret", SECRET)
    code, out = run_doctor(database_url, capsys, "--migrations", str(ROOT / "supabase/migrations"))
    assert code == 0, out
    for name in ("database", "migrations", "cron", "vault worker_url", "vault worker_secret",
                 "worker /healthz", "worker secret"):
        assert f"ok    {name}" in out, out
    assert "FAIL" not in out and SECRET not in out


def test_the_rest_backend_with_a_secret_key_passes_too(
    database_url: str, worker_url: str, vault: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    set_secret(vault, "worker_url", worker_url)
    set_secret(vault, "worker_secret", SECRET)
    gateway = RpcGateway(authenticator_url(database_url))
    try:
        env = {"SUPABASE_URL": gateway.url, "SUPABASE_SECRET_KEY": TEST_SECRET_KEY,
               "WORKER_SECRET": SECRET}
        code = cli.main(["doctor"], environ=env)
    finally:
        gateway.close()
    out = capsys.readouterr().out
    assert code == 0, out
    assert "ok    migrations" in out and "ok    vault worker_secret" in out


def test_missing_vault_secrets_say_how_to_create_them(
    database_url: str, vault: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    vault.execute("delete from vault.secrets where name in ('worker_url', 'worker_secret')")
    code, out = run_doctor(database_url, capsys)
    assert code == 1
    assert "FAIL  vault worker_url" in out and "vault.create_secret('https://" in out
    assert "FAIL  vault worker_secret" in out


def test_a_wrong_secret_and_a_dead_worker_url_fail_with_their_fix(
    database_url: str, worker_url: str, vault: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    set_secret(vault, "worker_url", worker_url)
    set_secret(vault, "worker_secret", "a-different-secret-0123456789abcdef")
    code, out = run_doctor(database_url, capsys)
    assert code == 1
    assert "FAIL  vault worker_secret" in out and "vault.update_secret" in out
    assert "ok    worker /healthz" in out
    assert "FAIL  worker secret" not in out  # the worker itself accepts this WORKER_SECRET

    set_secret(vault, "worker_secret", "wrong-for-both-0123456789abcdefgh")
    code, out = run_doctor(database_url, capsys, secret="wrong-for-both-0123456789abcdefgh")
    assert code == 1 and "FAIL  worker secret" in out and "fly secrets set WORKER_SECRET" in out

    set_secret(vault, "worker_url", f"http://127.0.0.1:{closed_port()}")
    code, out = run_doctor(database_url, capsys)
    assert code == 1 and "FAIL  worker /healthz" in out and "fly status" in out


def test_unapplied_migrations_and_unscheduled_jobs_are_named(
    database_url: str, worker_url: str, vault: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    set_secret(vault, "worker_url", worker_url)
    set_secret(vault, "worker_secret", SECRET)
    shipped = tmp_path / "migrations"
    shutil.copytree(ROOT / "supabase/migrations", shipped)
    (shipped / "29991231000000_future.sql").write_text(
        "select cron.schedule('future-job', '* * * * *', 'select 1');\n"
    )
    code, out = run_doctor(database_url, capsys, "--migrations", str(shipped))
    assert code == 1
    assert "FAIL  migrations" in out and "29991231000000" in out and "supabase db push" in out
    assert "FAIL  cron" in out and "future-job" in out


def test_an_unreachable_database_stops_early_with_the_fix(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"postgresql://postgres:postgres@127.0.0.1:{closed_port()}/postgres?connect_timeout=2"
    code, out = run_doctor(url, capsys)
    assert code == 1 and "FAIL  database" in out and "DATABASE_URL" in out


def test_evaluate_is_pure() -> None:
    expected = doctor.Shipped(("1", "2"), ("fetch-emails",))
    report = {
        "migrations": ["1", "2", "3"],
        "cron_jobs": [{"name": "fetch-emails", "active": True}],
        "worker_url": "https://w.example",
        "worker_secret_present": True,
        "worker_secret_matches": True,
    }
    checks = doctor.evaluate(report, expected)
    assert all(c.ok for c in checks)
    assert "newer ones: 3" in checks[0].detail
