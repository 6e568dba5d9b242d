"""Transaction poolers: when the psycopg backend leaves no state on a connection, the settings
that choose it, and which pooler failures count as transient (issue 17)."""

from __future__ import annotations

import pytest

from worker.config import load_settings
from worker.db.pg import uses_transaction_pooler
from worker.db.types import error_for_code, is_transient_code
from worker.errors import ConfigError, DatabaseConstraintError, DatabaseError

SECRET = "s" * 32
POOLER = "postgresql://postgres.ref:pw@aws-0-eu-central-1.pooler.supabase.com"


@pytest.mark.parametrize(
    ("url", "mode", "pooled"),
    [
        (f"{POOLER}:6543/postgres", "auto", True),
        (f"{POOLER}:5432/postgres", "auto", False),  # the session pooler keeps a session
        ("postgresql://postgres:pw@db.ref.supabase.co:5432/postgres", "auto", False),
        ("postgresql://postgres:pw@db.ref.supabase.co/postgres", "auto", False),
        ("host=a,b port=5432,6543 dbname=postgres", "auto", True),
        ("postgresql://postgres:pw@127.0.0.1:6432/postgres", "auto", False),
        ("postgresql://postgres:pw@127.0.0.1:6432/postgres", "off", True),
        (f"{POOLER}:6543/postgres", "on", False),
        ("not a conninfo ===", "auto", False),
    ],
)
def test_transaction_pooler_by_port_or_setting(url: str, mode: str, pooled: bool) -> None:
    assert uses_transaction_pooler(url, mode) is pooled  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("26000", 'prepared statement "_pg3_0" does not exist'),
        ("42P05", 'prepared statement "_pg3_0" already exists'),
        ("08P01", "query_wait_timeout"),  # pgbouncer's own errors carry 08P01
        ("08P01", "server conn crashed?"),
        ("53300", "no more connections allowed (max_client_conn)"),
        ("XX000", "(EMAXCLIENTS) max client connections reached"),  # Supavisor
        ("57P01", "terminating connection due to administrator command"),
    ],
)
def test_pooler_and_connection_failures_are_transient(code: str, message: str) -> None:
    assert is_transient_code(code)
    error = error_for_code("finish_send", message, code)
    assert type(error) is DatabaseError
    assert error.code == code


@pytest.mark.parametrize("code", ["22P02", "3F000", "42883", "23505"])
def test_what_the_call_itself_did_wrong_stays_permanent(code: str) -> None:
    assert isinstance(error_for_code("finish_send", "bad", code), DatabaseConstraintError)


def test_pooling_settings_default_and_parse() -> None:
    base = {"DATABASE_URL": f"{POOLER}:6543/postgres", "WORKER_SECRET": SECRET}
    settings = load_settings(base)
    assert (settings.database_prepared_statements, settings.db_pool_max) == ("auto", 7)
    settings = load_settings({**base, "DATABASE_PREPARED_STATEMENTS": "OFF", "DB_POOL_MAX": "4"})
    assert (settings.database_prepared_statements, settings.db_pool_max) == ("off", 4)


def test_bad_pooling_settings_are_reported() -> None:
    env = {
        "DATABASE_URL": f"{POOLER}:6543/postgres",
        "WORKER_SECRET": SECRET,
        "DATABASE_PREPARED_STATEMENTS": "sometimes",
        "DB_POOL_MAX": "0",
    }
    with pytest.raises(ConfigError) as raised:
        load_settings(env)
    text = str(raised.value)
    assert "DATABASE_PREPARED_STATEMENTS must be one of auto, on, off" in text
    assert "DB_POOL_MAX must be a positive integer" in text
