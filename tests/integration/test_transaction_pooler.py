"""The psycopg backend through a real pgbouncer in transaction mode (Supabase's port 6543).

psycopg prepares a statement after a few executions of the same text; a transaction pooler then
runs it on a server connection that never saw the PREPARE. With DATABASE_PREPARED_STATEMENTS on
auto the backend must notice the pooler by its port and leave no state on the connection, so a
burst of calls with every argument shape completes without a single error. The behaviour tests
of test_db_backends.py also run through the pooler (their `pooled` parameter).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC

import psycopg
import pytest

from worker.db import Database
from worker.db.pg import PgTransport
from worker.errors import DatabaseError

pytestmark = pytest.mark.integration

THREADS = 8
ROUNDS = 25  # each round makes 7 calls; psycopg would prepare from the 5th call of a text


@pytest.fixture(scope="module")
def pooled(pgbouncer_url: str) -> Iterator[Database]:
    transport = PgTransport(pgbouncer_url, timeout_seconds=10, min_size=THREADS, max_size=THREADS)
    assert transport.transaction_pooler, "port 6543 must switch prepared statements off"
    db = Database(transport)
    yield db
    db.close()


def test_a_burst_of_calls_through_the_transaction_pooler_has_no_errors(pooled: Database) -> None:
    job_type = f"pooler-{uuid.uuid4().hex[:12]}"
    errors: list[BaseException] = []
    completed: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        worker_id = f"w{n}"
        try:
            for i in range(ROUNDS):
                # Varying argument sets and types: optional arguments present or not, payloads
                # of different shapes, uuid arrays, jsonb results.
                payload = {"n": n, "i": i, "tags": ["a"] * (i % 3)} if i % 2 else [n, i]
                key = f"{job_type}-{n}-{i}" if i % 3 else None
                job_id = pooled.enqueue_job(job_type, payload, idempotency_key=key)
                [again] = pooled.enqueue_jobs([{"job_type": job_type, "payload": {"copy": i}}])
                claimed = pooled.dequeue_jobs(worker_id, batch_size=2, job_types=[job_type])
                ids = [job["id"] for job in claimed]
                assert all(job["created_at"].tzinfo is UTC for job in claimed)
                assert pooled.extend_lease(worker_id, ids, lease_seconds=60 + i) == len(ids)
                done = pooled.complete_jobs(worker_id, ids, [{"ok": i}] * len(ids))
                assert done == len(ids)
                assert pooled.get_job(job_id) is not None
                assert pooled.get_job(again) is not None
                with lock:
                    completed.extend(ids)
        except BaseException as exc:  # surfaces in the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    # Whatever a round left unclaimed (another thread may have claimed it) is drained now.
    while rest := pooled.dequeue_jobs("drain", batch_size=100, job_types=[job_type]):
        pooled.complete_jobs("drain", [job["id"] for job in rest])
        completed.extend(job["id"] for job in rest)
    assert len(completed) == len(set(completed)) == THREADS * ROUNDS * 2


def test_the_statement_timeout_still_bounds_a_call_behind_the_pooler(
    pgbouncer_url: str, database_url: str
) -> None:
    # Behind the pooler the timeout is set per transaction, not as a startup option: a call
    # stuck on a row lock must still end with a transient timeout instead of hanging.
    db = Database(PgTransport(pgbouncer_url, timeout_seconds=1, max_size=1))
    try:
        job_type = f"pooler-{uuid.uuid4().hex[:12]}"
        job_id = db.enqueue_job(job_type, {})
        [claimed] = db.dequeue_jobs("holder-test", batch_size=1, job_types=[job_type])
        assert claimed["id"] == job_id
        with psycopg.connect(database_url) as holder:
            holder.execute("select 1 from public.job_queue where id = %s for update", (job_id,))
            started = time.monotonic()
            with pytest.raises(DatabaseError) as raised:
                db.complete_job(job_id, "holder-test")
            assert time.monotonic() - started < 5
        assert raised.value.code == "57014"
        assert db.complete_job(job_id, "holder-test") is True
    finally:
        db.close()
