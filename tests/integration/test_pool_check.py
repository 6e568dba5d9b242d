"""The pool's check before use (worker.db.pg.check_pooled_connection): a round trip only for a
connection idle longer than CHECK_AFTER_IDLE_SECONDS, yet a connection the server ended is never
handed out, however recently it was used.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import DictRow

from worker.db import Database, pg

pytestmark = pytest.mark.integration


@pytest.fixture
def app_name() -> str:
    return f"pool-check-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def one_connection(database_url: str, app_name: str) -> Iterator[Database]:
    """A Database over a pool of exactly one connection, named so a test can end it."""
    db = Database(pg.PgTransport(database_url, min_size=1, max_size=1, application_name=app_name))
    yield db
    db.close()


@pytest.fixture
def round_trip_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the checks that cost a round trip (ConnectionPool.check_connection)."""
    counted: list[int] = []
    real = pg.ConnectionPool.check_connection

    def counting(conn: Any) -> None:
        counted.append(1)
        real(conn)

    monkeypatch.setattr(pg.ConnectionPool, "check_connection", staticmethod(counting))
    return counted


def end_backends(db: psycopg.Connection[DictRow], app_name: str) -> int:
    """Terminate the pool's server connections and wait until they have exited (a restart)."""
    rows = db.execute(
        "select pg_terminate_backend(pid, 5000) as ended from pg_stat_activity"
        " where application_name = %s",
        (app_name,),
    ).fetchall()
    assert all(row["ended"] for row in rows)
    return len(rows)


def test_back_to_back_calls_cost_no_check_round_trip(
    one_connection: Database, round_trip_checks: list[int]
) -> None:
    one_connection.ping()
    round_trip_checks.clear()
    for _ in range(50):
        assert one_connection.circuit_allow(f"pool-check-{uuid.uuid4().hex[:6]}") is True
    assert round_trip_checks == []


def test_a_connection_idle_past_the_threshold_is_checked_with_a_round_trip(
    one_connection: Database, round_trip_checks: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg, "CHECK_AFTER_IDLE_SECONDS", 0.05)
    one_connection.ping()
    round_trip_checks.clear()
    time.sleep(0.1)
    one_connection.ping()
    assert round_trip_checks == [1]


def test_a_connection_ended_while_idle_past_the_threshold_is_replaced_before_use(
    one_connection: Database,
    round_trip_checks: list[int],
    db: psycopg.Connection[DictRow],
    app_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pg, "CHECK_AFTER_IDLE_SECONDS", 0.05)
    one_connection.ping()
    assert end_backends(db, app_name) == 1
    time.sleep(0.1)
    round_trip_checks.clear()

    one_connection.ping()  # the dead connection fails its check and a new one answers

    assert len(round_trip_checks) >= 1
    assert end_backends(db, app_name) == 1  # a live replacement exists


def test_a_connection_ended_right_after_a_call_is_replaced_before_use(
    one_connection: Database,
    round_trip_checks: list[int],
    db: psycopg.Connection[DictRow],
    app_name: str,
) -> None:
    # Well inside the idle threshold: what gives the dead connection away is the server's
    # goodbye (its FATAL message and closed socket) waiting to be read, not its age.
    one_connection.ping()
    assert end_backends(db, app_name) == 1
    round_trip_checks.clear()

    one_connection.ping()

    assert len(round_trip_checks) >= 1
