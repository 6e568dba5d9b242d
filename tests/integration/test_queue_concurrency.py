"""Queue core under real concurrency: what pgTAP cannot show from a single session.

Every call runs in autocommit mode, one SQL function per transaction, as behind PostgREST.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

pytestmark = pytest.mark.integration

CLAIMERS = 8
BATCH_SIZE = 50
LEASE_SECONDS = 300


@pytest.fixture
def dsn(request: pytest.FixtureRequest) -> str:
    """The shared test database, or DATABASE_URL until tests/support/postgres.py provides it."""
    try:
        return str(request.getfixturevalue("database_url"))
    except pytest.FixtureLookupError:
        return os.environ["DATABASE_URL"]


def connect(dsn: str) -> psycopg.Connection[Any]:
    """An autocommit connection acting as the worker's role."""
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("set role service_role")
    return conn


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with connect(dsn) as c:
        yield c


@pytest.fixture
def job_type() -> str:
    """A job type no other test uses, so tests never see each other's jobs."""
    return f"t_{uuid.uuid4().hex[:12]}"


def run_threads(count: int, target: Callable[[int], None]) -> None:
    """Run target(i) in count threads and re-raise the first failure."""
    errors: list[BaseException] = []

    def wrapped(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # the assertion must surface in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def claim(
    c: psycopg.Connection[Any], worker: str, job_type: str, batch: int = BATCH_SIZE
) -> list[tuple[uuid.UUID, uuid.UUID | None]]:
    rows = c.execute(
        "select id, conversation_id from public.dequeue_jobs(%s, %s, %s, %s)",
        (worker, batch, LEASE_SECONDS, [job_type]),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def test_eight_claimers_get_each_of_5000_jobs_exactly_once(
    dsn: str, conn: psycopg.Connection[Any], job_type: str
) -> None:
    conn.execute(
        "select public.enqueue_job(%s, jsonb_build_object('n', n)) from generate_series(1, 5000) n",
        (job_type,),
    )
    claimed: list[list[uuid.UUID]] = [[] for _ in range(CLAIMERS)]
    start = threading.Barrier(CLAIMERS)

    def claimer(i: int) -> None:
        with connect(dsn) as c:
            worker = f"w{i}"
            start.wait()
            while batch := claim(c, worker, job_type):
                ids = [job_id for job_id, _ in batch]
                claimed[i].extend(ids)
                done = c.execute("select public.complete_jobs(%s, %s)", (worker, ids)).fetchone()
                assert done == (len(ids),)

    began = time.perf_counter()
    run_threads(CLAIMERS, claimer)
    elapsed = time.perf_counter() - began

    every = [job_id for ids in claimed for job_id in ids]
    assert len(every) == 5000
    assert len(set(every)) == 5000
    assert all(claimed), "every claimer got work"
    counts = conn.execute(
        "select status, count(*) from public.job_queue where job_type = %s group by status",
        (job_type,),
    ).fetchall()
    assert counts == [("completed", 5000)]
    events = conn.execute(
        "select e.event_type, count(*) from public.events e"
        " join public.job_queue q on q.id = e.job_id where q.job_type = %s"
        " group by e.event_type order by 1",
        (job_type,),
    ).fetchall()
    # The claim is recorded on the row (no event): each job claimed once, by the claimer that
    # completed it; events record the outcomes.
    assert events == [("job.completed", 5000), ("job.enqueued", 5000)]
    holders = dict(
        conn.execute(
            "select q.id, q.locked_by from public.job_queue q where q.job_type = %s"
            " and q.attempt_count = 1 and q.started_at is not null",
            (job_type,),
        ).fetchall()
    )
    assert len(holders) == 5000
    assert all(holders[job_id] == f"w{i}" for i, ids in enumerate(claimed) for job_id in ids)
    print(
        f"\nclaim+complete: 5000 jobs, {CLAIMERS} connections, batch {BATCH_SIZE}: "
        f"{elapsed:.2f} s, {5000 / elapsed:.0f} jobs/s"
    )


def test_no_conversation_ever_has_two_jobs_in_flight(
    dsn: str, conn: psycopg.Connection[Any], job_type: str
) -> None:
    conversations = [uuid.uuid4() for _ in range(5)]
    conn.execute(
        "select public.enqueue_job(%s, '{}', null, null, (%s::uuid[])[1 + n %% 5])"
        " from generate_series(1, 400) n",
        (job_type, conversations),
    )
    in_flight: dict[uuid.UUID, str] = {}
    guard = threading.Lock()
    handled: list[uuid.UUID] = []
    start = threading.Barrier(CLAIMERS)

    def claimer(i: int) -> None:
        worker = f"w{i}"
        rng = random.Random(i)
        with connect(dsn) as c:
            start.wait()
            while True:
                batch = claim(c, worker, job_type, batch=10)
                if not batch:
                    remaining = c.execute(
                        "select count(*) from public.job_queue"
                        " where job_type = %s and status <> 'completed'",
                        (job_type,),
                    ).fetchone()
                    if remaining == (0,):
                        return
                    continue  # the rest is held by peers; their completion frees it
                convs = [conv for _, conv in batch]
                assert len(set(convs)) == len(convs), "two jobs of one conversation in a batch"
                with guard:
                    for conv in convs:
                        assert conv not in in_flight, f"{conv} also held by {in_flight[conv]}"
                        in_flight[conv] = worker
                    handled.extend(job_id for job_id, _ in batch)
                # the database agrees: each conversation has exactly this one job processing
                held = c.execute(
                    "select conversation_id, count(*) from public.job_queue"
                    " where conversation_id = any(%s) and status = 'processing'"
                    " group by conversation_id",
                    (convs,),
                ).fetchall()
                assert sorted(n for _, n in held) == [1] * len(convs)
                time.sleep(rng.random() / 1000)  # hold the jobs a moment to widen race windows
                with guard:
                    for conv in convs:
                        del in_flight[conv]
                c.execute("select public.complete_jobs(%s, %s)", (worker, [j for j, _ in batch]))

    run_threads(CLAIMERS, claimer)
    assert len(handled) == 400
    assert len(set(handled)) == 400


def test_expired_lease_is_reclaimed_and_the_late_worker_changes_nothing(
    conn: psycopg.Connection[Any], job_type: str
) -> None:
    row = conn.execute(
        "select public.enqueue_job(%s, '{}', null, null, %s, 0, now(), 3)",
        (job_type, uuid.uuid4()),
    ).fetchone()
    assert row is not None
    job_id = row[0]
    assert claim(conn, "slow-worker", job_type)[0][0] == job_id
    assert claim(conn, "other-worker", job_type) == [], "a live lease is respected"

    # The slow worker's lease runs out (moved back rather than waited for).
    conn.execute("reset role")
    conn.execute(
        "update public.job_queue set locked_until = now() - interval '1 second' where id = %s",
        (job_id,),
    )
    conn.execute("set role service_role")

    assert claim(conn, "other-worker", job_type)[0][0] == job_id
    late = conn.execute(
        "select public.complete_job(%s, 'slow-worker', '{\"by\": \"slow\"}')", (job_id,)
    ).fetchone()
    assert late == (False,)
    assert conn.execute(
        "select public.extend_lease('slow-worker', %s)", ([job_id],)
    ).fetchone() == (0,)
    assert conn.execute(
        "select public.fail_job(%s, 'slow-worker', 'late')", (job_id,)
    ).fetchone() == (None,)
    row = conn.execute(
        "select status, locked_by, attempt_count, result, last_error from public.job_queue"
        " where id = %s",
        (job_id,),
    ).fetchone()
    assert row == ("processing", "other-worker", 2, None, "lease expired (held by slow-worker)")

    assert conn.execute(
        "select public.complete_job(%s, 'other-worker', '{\"by\": \"other\"}')", (job_id,)
    ).fetchone() == (True,)
    final = conn.execute(
        "select status, result from public.job_queue where id = %s", (job_id,)
    ).fetchone()
    assert final == ("completed", {"by": "other"})


def assert_one_job_per_key(
    conn: psycopg.Connection[Any],
    job_type: str,
    keys: list[str],
    results: Sequence[Mapping[str, Any]],
) -> None:
    """Every enqueuer got the same id per key, and each key made one job and one event."""
    for key in keys:
        assert len({str(r[key]) for r in results}) == 1, f"{key} got several ids"
    rows = conn.execute(
        "select count(*), count(distinct idempotency_key) from public.job_queue"
        " where job_type = %s",
        (job_type,),
    ).fetchone()
    assert rows == (len(keys), len(keys))
    events = conn.execute(
        "select count(*) from public.events e join public.job_queue q on q.id = e.job_id"
        " where q.job_type = %s and e.event_type = 'job.enqueued'",
        (job_type,),
    ).fetchone()
    assert events == (len(keys),)


def test_concurrent_enqueue_with_one_key_creates_one_job(
    dsn: str, conn: psycopg.Connection[Any], job_type: str
) -> None:
    keys = [f"{job_type}:{k}" for k in range(25)]
    results: list[dict[str, uuid.UUID]] = [{} for _ in range(CLAIMERS)]
    start = threading.Barrier(CLAIMERS)

    def enqueuer(i: int) -> None:
        order = keys[:]
        random.Random(i).shuffle(order)
        with connect(dsn) as c:
            start.wait()
            for key in order:
                row = c.execute(
                    "select public.enqueue_job(%s, jsonb_build_object('by', %s), %s)",
                    (job_type, i, key),
                ).fetchone()
                assert row is not None
                results[i][key] = row[0]

    run_threads(CLAIMERS, enqueuer)
    assert_one_job_per_key(conn, job_type, keys, results)


def test_concurrent_batches_sharing_keys_create_each_job_once(
    dsn: str, conn: psycopg.Connection[Any], job_type: str
) -> None:
    # Batches list the shared keys in different orders; none may deadlock or duplicate a job.
    keys = [f"{job_type}:{k}" for k in range(40)]
    results: list[dict[str, str]] = [{} for _ in range(CLAIMERS)]
    start = threading.Barrier(CLAIMERS)

    def enqueuer(i: int) -> None:
        order = keys[:]
        random.Random(i).shuffle(order)
        with connect(dsn) as c:
            start.wait()
            for first in range(0, len(order), 10):
                batch = order[first : first + 10]
                jobs = [
                    {"job_type": job_type, "payload": {"by": i}, "idempotency_key": key}
                    for key in batch
                ]
                row = c.execute("select public.enqueue_jobs(%s)", (Jsonb(jobs),)).fetchone()
                assert row is not None
                results[i].update(zip(batch, map(str, row[0]), strict=True))

    run_threads(CLAIMERS, enqueuer)
    assert_one_job_per_key(conn, job_type, keys, results)
