"""The supabase-py backend with Supabase's new secret API key, and listings longer than
PostgREST's max-rows, through the PostgREST-compatible gateway to the real database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from worker.config import load_settings
from worker.db import Database, connect
from worker.db.pg import PgTransport
from worker.devstack.gateway import TEST_SECRET_KEY, RpcGateway, authenticator_url

pytestmark = pytest.mark.integration

WORKER = "test-worker"
MAX_ROWS = 2  # a server cap far below the listings' length


@pytest.fixture(scope="module")
def capped_gateway(database_url: str) -> Iterator[RpcGateway]:
    server = RpcGateway(authenticator_url(database_url), max_rows=MAX_ROWS)
    yield server
    server.close()


@pytest.fixture(scope="module")
def secret_key_db(capped_gateway: RpcGateway) -> Iterator[Database]:
    # Configured the way an operator does it: SUPABASE_URL + SUPABASE_SECRET_KEY.
    settings = load_settings(
        {"SUPABASE_URL": capped_gateway.url, "SUPABASE_SECRET_KEY": TEST_SECRET_KEY},
        require_worker_secret=False,
    )
    assert settings.database_backend == "supabase"
    db = connect(settings)
    yield db
    db.close()


@pytest.fixture(scope="module")
def pg_db(database_url: str) -> Iterator[Database]:
    db = Database(PgTransport(database_url, timeout_seconds=10, max_size=2))
    yield db
    db.close()


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _store(db: Database) -> str:
    name = _unique("store")
    return db.admin_create_store(
        {
            "name": name,
            "support_email": f"{name}@shop.example",
            "imap_host": "127.0.0.1",
            "imap_port": 993,
            "imap_user": "support",
            "smtp_host": "127.0.0.1",
            "smtp_port": 587,
            "smtp_user": "support",
            "credits": 0,
        },
        {"imap_password": "test-imap-pw", "smtp_password": "test-smtp-pw"},
    )


def test_the_secret_key_works_end_to_end(secret_key_db: Database) -> None:
    secret_key_db.ping()
    job_type = _unique("t")
    job_id = secret_key_db.enqueue_job(job_type, {"n": 1})
    [job] = secret_key_db.dequeue_jobs(WORKER, batch_size=5, job_types=[job_type])
    assert job["id"] == job_id
    assert secret_key_db.complete_job(job_id, WORKER) is True


def test_the_gateway_refuses_a_secret_key_sent_as_a_bearer(capped_gateway: RpcGateway) -> None:
    # Why the transport sends the opaque key only as `apikey`: as a bearer it is not a JWT.
    answer = httpx.post(
        f"{capped_gateway.url}/rest/v1/rpc/circuit_allow",
        json={"p_service": "x"},
        headers={"apikey": TEST_SECRET_KEY, "Authorization": f"Bearer {TEST_SECRET_KEY}"},
    )
    assert answer.status_code == 401
    assert answer.json()["code"] == "PGRST301"
    unknown = httpx.post(
        f"{capped_gateway.url}/rest/v1/rpc/circuit_allow",
        json={"p_service": "x"},
        headers={"apikey": "sb_secret_unknown"},
    )
    assert unknown.status_code == 401


def test_listings_longer_than_max_rows_arrive_whole(
    secret_key_db: Database, pg_db: Database
) -> None:
    for _ in range(MAX_ROWS + 3):
        _store(pg_db)
    over_rest = [s["id"] for s in secret_key_db.list_active_stores()]
    direct = [s["id"] for s in pg_db.list_active_stores()]
    assert len(direct) > MAX_ROWS
    assert over_rest == direct
    assert [s["id"] for s in secret_key_db.list_stores(include_inactive=True)] == [
        s["id"] for s in pg_db.list_stores(include_inactive=True)
    ]

    job_type = _unique("dead")
    for n in range(MAX_ROWS + 3):
        job_id = pg_db.enqueue_job(job_type, {"n": n})
        [job] = pg_db.dequeue_jobs(WORKER, batch_size=1, job_types=[job_type])
        assert pg_db.fail_job(job["id"], WORKER, "bad", error_type="permanent") == "dead_letter"
    # A history longer than the cap: the claim writes no event (it is on the job row), so the
    # last job also gets a step event, as a handler's steps write them.
    assert pg_db.record_events([{"job_id": job_id, "event_type": "process.validated"}]) == 1
    dead = secret_key_db.list_dead_letter_jobs(job_type=job_type)
    direct_dead = pg_db.list_dead_letter_jobs(job_type=job_type)
    assert [j["id"] for j in dead] == [j["id"] for j in direct_dead]
    assert len(dead) == MAX_ROWS + 3
    events = secret_key_db.get_job_events(job_id)
    assert len(events) > MAX_ROWS
    assert events == pg_db.get_job_events(job_id)


def test_every_paged_function_is_stable(pg_db: Database, database_url: str) -> None:
    # Paging re-runs the function per page: only a STABLE one returns the same list each time.
    import psycopg

    from worker.db.rest import PAGED_FUNCTIONS

    with psycopg.connect(database_url) as conn:
        volatility = dict(
            conn.execute(
                "select proname::text, provolatile::text from pg_proc"
                " where pronamespace = 'public'::regnamespace and proname = any(%s)",
                (sorted(PAGED_FUNCTIONS),),
            ).fetchall()
        )
    assert volatility == {fn: "s" for fn in PAGED_FUNCTIONS}
