"""Concurrency of the pipeline's SQL: reserve_credit never overdraws and stays idempotent per job,
two fetch runs storing the same message produce one message and one job, one sender's
concurrent reservations never pass the reply cap, and a top-up racing an email that starts
waiting for credits never leaves it asleep.

These need several sessions at once. They were pgTAP files driving sessions through dblink,
which only a superuser may open without a password; Supabase runs `supabase test db` as
`postgres`, not a superuser, so they live here. The second session is observed waiting on the
first (pg_stat_activity) before the first commits, so the race is really exercised.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

pytestmark = pytest.mark.integration

BLOCKED_WAIT_LIMIT = 30.0  # seconds; a broken build fails instead of hanging the suite


def session(database_url: str) -> psycopg.Connection[Any]:
    """A session acting as the worker's role, in explicit transactions."""
    conn = psycopg.connect(database_url)
    conn.execute("set role service_role")
    conn.commit()
    return conn


def blocked(observer: psycopg.Connection[Any], pid: int) -> bool:
    """Whether backend `pid` comes to wait on a lock (polled, bounded)."""
    deadline = time.monotonic() + BLOCKED_WAIT_LIMIT
    while time.monotonic() < deadline:
        row = observer.execute(
            "select 1 from pg_stat_activity where pid = %s and wait_event_type = 'Lock'", (pid,)
        ).fetchone()
        if row is not None:
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def store_id(db: psycopg.Connection[Any]) -> Iterator[str]:
    sid = str(uuid.uuid4())
    db.execute(
        "insert into public.stores (id, name, support_email, imap_host, imap_port, imap_user,"
        " smtp_host, smtp_port, smtp_user, credits)"
        " values (%s, 'Concorrida', %s, 'imap.c.test', 993, 'help', 'smtp.c.test', 587,"
        " 'help', 1)",
        (sid, f"help-{sid[:8]}@concorrida.test"),
    )
    yield sid
    db.execute("delete from public.job_queue where store_id = %s", (sid,))
    db.execute("delete from public.events where store_id = %s", (sid,))
    db.execute("delete from public.stores where id = %s", (sid,))


@pytest.fixture
def sessions(database_url: str) -> Iterator[list[psycopg.Connection[Any]]]:
    conns = [session(database_url) for _ in range(4)]
    yield conns
    for conn in conns:
        conn.close()


def credits(db: psycopg.Connection[Any], store_id: str) -> int:
    row = db.execute("select credits from public.stores where id = %s", (store_id,)).fetchone()
    assert row is not None
    return int(row["credits"])


def reserve(conn: psycopg.Connection[Any], store_id: str, job_id: str) -> str:
    row = conn.execute("select public.reserve_credit(%s, %s)", (store_id, job_id)).fetchone()
    assert row is not None
    return str(row[0])


def race(
    db: psycopg.Connection[Any],
    first: psycopg.Connection[Any],
    second: psycopg.Connection[Any],
    call: Callable[[psycopg.Connection[Any]], Any],
) -> tuple[Any, Any]:
    """`first` calls and holds its transaction open; `second` calls and must wait for it; then
    `first` commits. Returns both results."""
    first_result = call(first)
    second_pid = second.info.backend_pid
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: Future[Any] = pool.submit(call, second)
        try:
            assert blocked(db, second_pid), "the second session did not wait for the first"
        finally:
            first.commit()
        second_result = pending.result(timeout=BLOCKED_WAIT_LIMIT)
    second.commit()
    return first_result, second_result


def test_the_last_credit_goes_to_one_of_two_jobs(
    db: psycopg.Connection[Any], sessions: list[psycopg.Connection[Any]], store_id: str
) -> None:
    a, b = sessions[:2]
    results = race(db, a, b, lambda conn: reserve(conn, store_id, str(uuid.uuid4())))
    assert results == ("reserved", "no_credits")  # b saw a's charge, not the stale balance
    assert credits(db, store_id) == 0


def test_the_same_job_racing_itself_is_charged_once(
    db: psycopg.Connection[Any], sessions: list[psycopg.Connection[Any]], store_id: str
) -> None:
    db.execute("update public.stores set credits = 5 where id = %s", (store_id,))
    a, b = sessions[:2]
    job_id = str(uuid.uuid4())
    assert race(db, a, b, lambda conn: reserve(conn, store_id, job_id)) == (
        "reserved",
        "already_reserved",
    )
    row = db.execute(
        "select count(*) as n from public.credit_ledger where job_id = %s", (job_id,)
    ).fetchone()
    assert (credits(db, store_id), row) == (4, {"n": 1})


def test_four_jobs_two_credits_all_at_once(
    db: psycopg.Connection[Any], sessions: list[psycopg.Connection[Any]], store_id: str
) -> None:
    db.execute("update public.stores set credits = 2 where id = %s", (store_id,))

    def reserve_and_commit(conn: psycopg.Connection[Any]) -> str:
        result = reserve(conn, store_id, str(uuid.uuid4()))
        conn.commit()
        return result

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = sorted(pool.map(reserve_and_commit, sessions))
    assert results == ["no_credits", "no_credits", "reserved", "reserved"]
    assert credits(db, store_id) == 0


def test_two_fetch_runs_store_the_same_message_once(
    db: psycopg.Connection[Any], sessions: list[psycopg.Connection[Any]], store_id: str
) -> None:
    a, b = sessions[:2]
    messages = Jsonb([{"message_id": "<race@cliente.test>", "uid": 1, "from_address": "r@c.test"}])

    def ingest(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        row = conn.execute(
            "select public.ingest_messages(%s, 'INBOX', 1, 1, %s)", (store_id, messages)
        ).fetchone()
        assert row is not None
        return dict(row[0])

    first, second = race(db, a, b, ingest)
    assert first["stored"] == 1
    second.pop("job_ids", None)
    assert second == {"stored": 0, "duplicates": 1, "skipped": 0, "own_copies": 0, "last_uid": 1}

    def count(sql: str) -> int:
        row = db.execute(sql, (store_id,)).fetchone()
        assert row is not None
        return int(row["n"])

    assert count("select count(*) as n from public.messages where store_id = %s") == 1
    assert count("select count(*) as n from public.job_queue where store_id = %s") == 1
    assert (
        count(
            "select count(*) as n from public.events where store_id = %s"
            " and event_type = 'message.duplicate'"
        )
        == 1
    )


def test_one_sender_in_four_sessions_gets_exactly_the_reply_cap(
    db: psycopg.Connection[Any], sessions: list[psycopg.Connection[Any]], store_id: str
) -> None:
    # Moved from supabase/tests/reply_limits_test.sql (it needed dblink): the cap is checked
    # where the credit is reserved, by normalised address, so concurrent reservations for one
    # sender under different spellings cannot pass it together.
    db.execute("update public.stores set credits = 50 where id = %s", (store_id,))
    a, *others = sessions

    def reserve_reply(conn: psycopg.Connection[Any], address: str) -> str:
        row = conn.execute(
            "select public.reserve_reply(%s, %s, %s, 2, 24, null)",
            (store_id, str(uuid.uuid4()), address),
        ).fetchone()
        assert row is not None
        conn.commit()
        return str(row[0])

    first = a.execute(
        "select public.reserve_reply(%s, %s, 'mallory@example.com', 2, 24, null)",
        (store_id, str(uuid.uuid4())),
    ).fetchone()
    assert first == ("reserved",)  # uncommitted: a holds the store while the others ask
    with ThreadPoolExecutor(max_workers=len(others)) as pool:
        pending = [
            pool.submit(reserve_reply, conn, f"Mallory+{n}@Example.com")
            for n, conn in enumerate(others)
        ]
        try:
            for conn in others:
                assert blocked(db, conn.info.backend_pid), "a session did not wait for a"
        finally:
            a.commit()
        results = sorted(p.result(timeout=BLOCKED_WAIT_LIMIT) for p in pending)
    assert results == ["reply_cap", "reply_cap", "reserved"]
    row = db.execute(
        "select count(*) as n from public.credit_ledger where store_id = %s", (store_id,)
    ).fetchone()
    assert row == {"n": 2}


def processing_job(db: psycopg.Connection[Any], store_id: str) -> str:
    """A process_email job of the store, held by worker w1."""
    job_id = str(uuid.uuid4())
    db.execute(
        "insert into public.job_queue (id, job_type, store_id, status, locked_by, locked_until,"
        " attempt_count, started_at) values (%s, 'process_email_concurrency', %s, 'processing',"
        " 'w1', now() + interval '5 minutes', 1, now())",
        (job_id, store_id),
    )
    return job_id


def job_state(db: psycopg.Connection[Any], job_id: str) -> dict[str, Any]:
    row = db.execute(
        "select status, next_retry_at <= now() as due,"
        " exists (select 1 from public.credit_waits w where w.job_id = q.id) as waiting"
        " from public.job_queue q where q.id = %s",
        (job_id,),
    ).fetchone()
    assert row is not None
    return dict(row)


def wait_for_credits(conn: psycopg.Connection[Any], job_id: str) -> str:
    row = conn.execute("select public.wait_for_credits(%s, 'w1', 21600)", (job_id,)).fetchone()
    assert row is not None
    return str(row[0])


def top_up(conn: psycopg.Connection[Any], store_id: str) -> int:
    row = conn.execute("select public.admin_add_credits(%s, 5)", (store_id,)).fetchone()
    assert row is not None
    return int(row[0])


def test_a_top_up_committing_after_a_job_starts_waiting_wakes_it(
    db: psycopg.Connection[Any], sessions: list[psycopg.Connection[Any]], store_id: str
) -> None:
    db.execute("update public.stores set credits = 0 where id = %s", (store_id,))
    job_id = processing_job(db, store_id)
    waiter, payer = sessions[:2]

    assert wait_for_credits(waiter, job_id) == "waiting"  # its transaction still open
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(top_up, payer, store_id)
        try:
            assert blocked(db, payer.info.backend_pid), "the top-up did not wait for the waiter"
        finally:
            waiter.commit()
        assert pending.result(timeout=BLOCKED_WAIT_LIMIT) == 5
    payer.commit()

    # The top-up saw the wait the job recorded and made it due: no email sleeps on credits.
    assert job_state(db, job_id) == {"status": "pending", "due": True, "waiting": False}


def test_a_job_that_would_wait_while_a_top_up_commits_goes_on_instead(
    db: psycopg.Connection[Any], sessions: list[psycopg.Connection[Any]], store_id: str
) -> None:
    db.execute("update public.stores set credits = 0 where id = %s", (store_id,))
    job_id = processing_job(db, store_id)
    waiter, payer = sessions[:2]

    assert top_up(payer, store_id) == 5  # its transaction still open
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(wait_for_credits, waiter, job_id)
        try:
            assert blocked(db, waiter.info.backend_pid), "the waiter did not wait for the top-up"
        finally:
            payer.commit()
        assert pending.result(timeout=BLOCKED_WAIT_LIMIT) == "has_credits"
    waiter.commit()
    assert job_state(db, job_id) == {"status": "processing", "due": True, "waiting": False}
