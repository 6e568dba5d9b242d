"""A busy store beside a quiet one (issue 16 item 4): the real runner drains one store's backlog
while another store's job arrives; the quiet store's job must be claimed by the first claim that
can see it, not after the backlog.

Asserted on claim order, not on time: every claim stamps its jobs' started_at with its
transaction's start, so "the first claim that began after the job was committed" is exact
whatever the machine's speed. bench/fairness.py measures the same scenario in seconds at full
scale (a 2,000-email backlog).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from worker.db import Database
from worker.db.pg import PgTransport
from worker.queue.handlers import Handlers, JobRun
from worker.queue.outcome import Complete, Outcome
from worker.queue.runner import RunnerOptions, run_queue
from worker.runs import Budget

pytestmark = pytest.mark.integration

BACKLOG = 150  # the busy store's jobs, enqueued at once
SLOTS = 8  # the runner's concurrency: far fewer slots than the backlog
ARRIVE_AFTER = 30  # the quiet store's job arrives once this many backlog jobs have started
WORK_SECONDS = 0.02  # each job's "external calls"
BUDGET_SECONDS = 120.0  # generous: the assertions are on order, the budget only stops a hang


class SlowNoop:
    """Stands in for the email pipeline: waits, then completes; counts the jobs it started."""

    def __init__(self) -> None:
        self.started = 0
        self.lock = threading.Lock()
        self.reached = threading.Event()

    def handle(self, run: JobRun) -> Outcome:
        with self.lock:
            self.started += 1
            if self.started >= ARRIVE_AFTER:
                self.reached.set()
        time.sleep(WORK_SECONDS)
        return Complete({"outcome": "done"})

    def dead_lettered(self, job: Mapping[str, Any]) -> None:
        raise AssertionError(f"no job of this test is dead-lettered: {job['id']}")


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(PgTransport(database_url, timeout_seconds=10, max_size=SLOTS + 2))
    yield database
    database.close()


def connect(dsn: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("set role service_role")
    return conn


def enqueue(conn: psycopg.Connection[Any], job_type: str, store: uuid.UUID, count: int) -> None:
    jobs = [
        {"job_type": job_type, "store_id": str(store), "conversation_id": str(uuid.uuid4())}
        for _ in range(count)
    ]
    conn.execute("select public.enqueue_jobs(%s)", (Jsonb(jobs),))


def test_a_quiet_store_is_claimed_in_the_first_claim_after_it_arrives(
    db: Database, database_url: str
) -> None:
    job_type = f"t_fair_{uuid.uuid4().hex[:10]}"
    busy, quiet = uuid.uuid4(), uuid.uuid4()
    handler = SlowNoop()
    handlers = Handlers()
    handlers.register(job_type, handler)
    arrived: list[datetime] = []

    with connect(database_url) as conn:
        enqueue(conn, job_type, busy, BACKLOG)

        def quiet_store_writes() -> None:
            handler.reached.wait(BUDGET_SECONDS)
            enqueue(conn, job_type, quiet, 1)
            # A transaction that starts now sees the job: every claim stamped later than this
            # (started_at is its transaction's start) could have taken it.
            row = conn.execute("select now()").fetchone()
            assert row is not None
            arrived.append(row[0])

        writer = threading.Thread(target=quiet_store_writes)
        writer.start()
        summary = run_queue(
            db, handlers, Budget(BUDGET_SECONDS), options=RunnerOptions(SLOTS, lease_seconds=60)
        )
        writer.join()

        assert summary["outcomes"] == {"done": BACKLOG + 1}
        rows = conn.execute(
            "select store_id, started_at, status, attempt_count from public.job_queue"
            " where job_type = %s",
            (job_type,),
        ).fetchall()

    assert arrived, "the quiet store's job was enqueued"
    assert {(status, attempts) for _, _, status, attempts in rows} == {("completed", 1)}
    [quiet_claimed] = [started for store, started, _, _ in rows if store == quiet]
    busy_claims = sorted({started for store, started, _, _ in rows if store == busy})
    # No claim of the busy store's jobs began after the quiet job was visible and before the
    # claim that took it: it went in the first claim that could see it.
    skipped = [claim for claim in busy_claims if arrived[0] < claim < quiet_claimed]
    assert skipped == [], (arrived[0], quiet_claimed, skipped)
    # ... while most of the backlog was still waiting (oldest first would have taken it last).
    still_waiting = sum(
        1 for store, started, _, _ in rows if store == busy and started > quiet_claimed
    )
    assert still_waiting >= BACKLOG - ARRIVE_AFTER - 2 * SLOTS
