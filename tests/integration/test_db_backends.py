"""The same behaviour tests against both backends: psycopg straight to Postgres, and supabase-py
through the PostgREST-compatible gateway to the same database.

Tests isolate themselves with unique job types, services and stores, never by truncation.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support.gateway import GatewayHandle
from worker.db import Database
from worker.db.pg import PgTransport
from worker.db.rest import RestTransport
from worker.db.types import normalize_row
from worker.devstack.gateway import RpcGateway
from worker.errors import DatabaseConstraintError, DatabaseError

pytestmark = pytest.mark.integration

WORKER = "test-worker"


@pytest.fixture(scope="module")
def pg_db(database_url: str) -> Iterator[Database]:
    db = Database(PgTransport(database_url, timeout_seconds=10, max_size=4))
    yield db
    db.close()


@pytest.fixture(scope="module")
def pooled_db(pgbouncer_url: str) -> Iterator[Database]:
    """psycopg through pgbouncer in transaction mode on port 6543, prepared statements on auto."""
    transport = PgTransport(pgbouncer_url, timeout_seconds=10, max_size=4)
    assert transport.transaction_pooler
    db = Database(transport)
    yield db
    db.close()


@pytest.fixture(scope="module")
def rest_db(gateway: GatewayHandle) -> Iterator[Database]:
    db = Database(RestTransport(gateway.base_url, gateway.service_role_jwt, timeout_seconds=10))
    yield db
    db.close()


@pytest.fixture(params=["pg", "pooled", "rest"])
def db(request: pytest.FixtureRequest) -> Database:
    return request.getfixturevalue(f"{request.param}_db")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def closed_port() -> int:
    # Bind and release: nothing listens there afterwards, so a connection is refused at once.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def claim_one(db: Database, job_type: str) -> dict[str, Any]:
    [job] = db.dequeue_jobs(WORKER, batch_size=5, job_types=[job_type])
    return job


def new_store(db: Database, credits: int = 0) -> str:
    name = unique("store")
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
            "credits": credits,
        },
        {"imap_password": "test-imap-pw", "smtp_password": "test-smtp-pw"},
    )


def message(uid: int, message_id: str) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "from_address": "customer@example.com",
        "from_name": "Customer",
        "reply_to": None,
        "to_addresses": ["support@shop.example"],
        "cc_addresses": [],
        "subject": "Where is my order?",
        "date": "2026-01-05T10:00:00+01:00",
        "in_reply_to": None,
        "references": [],
        "headers": {"x-mailer": "test"},
        "body_text": "Hello, where is order #1001?",
        "attachments": [],
        "size_bytes": 1234,
        "uid": uid,
        "skip_reason": None,
    }


# -- queue round trips ------------------------------------------------------------------------


def test_enqueue_is_idempotent_and_dequeue_claims_with_normalised_types(db: Database) -> None:
    job_type = unique("t")
    key = unique("key")
    job_id = db.enqueue_job(job_type, {"n": 1, "nested": {"a": [1, 2]}}, idempotency_key=key)
    assert isinstance(job_id, str) and str(uuid.UUID(job_id)) == job_id
    assert db.enqueue_job(job_type, {"n": 2}, idempotency_key=key) == job_id

    job = claim_one(db, job_type)

    assert job["id"] == job_id
    assert job["status"] == "processing"
    assert job["locked_by"] == WORKER
    assert job["attempt_count"] == 1
    assert job["payload"] == {"n": 1, "nested": {"a": [1, 2]}}
    for column in ("created_at", "started_at", "locked_until", "next_retry_at"):
        assert isinstance(job[column], datetime), column
        assert job[column].tzinfo is UTC, column
    assert job["locked_until"] > job["started_at"]
    assert db.dequeue_jobs(WORKER, job_types=[job_type]) == []


def test_enqueue_jobs_batches_with_the_same_rules(db: Database) -> None:
    job_type = unique("t")
    key = unique("key")
    existing = db.enqueue_job(job_type, {"n": 0}, idempotency_key=key)
    run_at = datetime.now(UTC) + timedelta(hours=1)
    ids = db.enqueue_jobs(
        [
            {"job_type": job_type, "payload": {"n": 1}},
            {"job_type": job_type, "payload": {"n": 2}, "idempotency_key": key},
            {"job_type": job_type, "payload": {"n": 3}, "run_at": run_at, "priority": 2},
        ]
    )
    assert len(ids) == 3 and ids[1] == existing
    assert all(isinstance(i, str) and str(uuid.UUID(i)) == i for i in ids)
    later = db.get_job(ids[2])
    assert later is not None and later["next_retry_at"] == run_at and later["priority"] == 2
    claimed = db.dequeue_jobs(WORKER, batch_size=5, job_types=[job_type])
    # oldest first; the third is not due for an hour
    assert [job["id"] for job in claimed] == [existing, ids[0]]
    assert db.enqueue_jobs([]) == []
    with pytest.raises(DatabaseConstraintError) as raised:
        db.enqueue_jobs([{"payload": {}}])
    assert raised.value.code == "22023"


def test_complete_only_by_the_lease_holder(db: Database) -> None:
    job_type = unique("t")
    job_id = db.enqueue_job(job_type, {})
    claim_one(db, job_type)

    assert db.complete_job(job_id, "someone-else") is False
    assert db.complete_job(job_id, WORKER, {"ok": True}) is True
    assert db.complete_job(job_id, WORKER) is False

    job = db.get_job(job_id)
    assert job is not None and job["status"] == "completed"
    assert job["result"] == {"ok": True}
    events = [event["event_type"] for event in db.get_job_events(job_id)]
    # the claim is on the row (who, when, which attempt); events record the outcomes
    assert events == ["job.enqueued", "job.completed"]
    assert job["locked_by"] == WORKER and job["attempt_count"] == 1
    assert job["started_at"] is not None


def test_batch_ack_and_lease_extension(db: Database) -> None:
    job_type = unique("t")
    ids = [db.enqueue_job(job_type, {"i": i}) for i in range(3)]
    claimed = db.dequeue_jobs(WORKER, batch_size=10, job_types=[job_type])
    assert sorted(job["id"] for job in claimed) == sorted(ids)

    assert db.extend_lease(WORKER, ids, lease_seconds=600) == 3
    assert db.extend_lease("someone-else", ids) == 0
    assert db.complete_jobs(WORKER, ids[:2], [{"i": 0}, {"i": 1}]) == 2
    assert db.complete_jobs(WORKER, ids) == 1


def test_fail_retries_then_dead_letters_and_requeue(db: Database) -> None:
    job_type = unique("t")
    job_id = db.enqueue_job(job_type, {}, max_attempts=3)
    claim_one(db, job_type)
    before = datetime.now(UTC)

    assert db.fail_job(job_id, "someone-else", "nope") is None
    assert db.fail_job(job_id, WORKER, "smtp 451", retry_after_seconds=600) == "pending"
    job = db.get_job(job_id)
    assert job is not None
    assert job["status"] == "pending"
    assert job["last_error"] == "smtp 451" and job["last_error_type"] == "transient"
    assert job["next_retry_at"] >= before + timedelta(seconds=600)

    assert db.requeue_dlq_job(job_id) is False  # not dead-lettered
    job_id2 = db.enqueue_job(job_type, {})
    claim_one(db, job_type)
    assert db.fail_job(job_id2, WORKER, "bad address", error_type="permanent") == "dead_letter"

    dead = db.list_dead_letter_jobs(job_type=job_type)
    assert [row["id"] for row in dead] == [job_id2]
    assert dead[0]["last_error_type"] == "permanent"
    assert db.requeue_dlq_job(job_id2) is True
    requeued = db.get_job(job_id2)
    assert requeued is not None and requeued["status"] == "pending"
    assert requeued["attempt_count"] == 0


def test_defer_returns_the_job_without_spending_an_attempt(db: Database) -> None:
    job_type = unique("t")
    job_id = db.enqueue_job(job_type, {})
    claim_one(db, job_type)
    before = datetime.now(UTC)

    assert db.defer_job(job_id, WORKER, 120, "circuit open") is True

    job = db.get_job(job_id)
    assert job is not None and job["status"] == "pending"
    assert job["next_retry_at"] >= before + timedelta(seconds=120)
    assert db.defer_job(job_id, WORKER, 120, "again") is False


def test_purge_dead_letter_jobs(db: Database) -> None:
    job_type = unique("t")
    job_id = db.enqueue_job(job_type, {})
    claim_one(db, job_type)
    db.fail_job(job_id, WORKER, "broken", error_type="permanent")

    assert db.purge_dead_letter_jobs([job_id]) == 1
    assert db.get_job(job_id) is None
    assert db.list_dead_letter_jobs(job_type=job_type) == []


def test_circuit_breaker_opens_after_consecutive_failures(db: Database) -> None:
    service = unique("imap")
    assert db.circuit_allow(service) is True
    assert db.circuit_record(service, True) == "closed"
    states = [db.circuit_record(service, False) for _ in range(5)]
    assert states[-1] == "open"
    assert states[0] == "closed"
    assert db.circuit_allow(service) is False


def test_stats_metrics_and_void(db: Database) -> None:
    job_type = unique("t")
    db.enqueue_job(job_type, {})
    assert db.aggregate_queue_metrics() is None
    stats = db.queue_stats()
    assert {"job_type": job_type, "status": "pending", "count": 1} in stats["jobs"]


# -- ingestion and processing -----------------------------------------------------------------


def test_ingest_messages_then_load_job_context(db: Database) -> None:
    store_id = new_store(db, credits=1)
    header_id = f"<{uuid.uuid4()}@example.com>"
    assert db.get_mailbox_state(store_id, "INBOX") is None

    result = db.ingest_messages(store_id, "INBOX", 7, 42, [message(42, header_id)])
    again = db.ingest_messages(store_id, "INBOX", 7, 42, [message(42, header_id)])

    assert result["stored"] == 1 and result["duplicates"] == 0
    assert again["stored"] == 0 and again["duplicates"] == 1 and again["job_ids"] == []
    state = db.get_mailbox_state(store_id, "INBOX")
    assert state is not None
    assert (state["store_id"], state["uidvalidity"], state["last_uid"]) == (store_id, 7, 42)
    assert state["updated_at"].tzinfo is UTC

    [job_id] = result["job_ids"]
    context = db.load_job_context(job_id)
    assert context is not None
    assert context["job"]["id"] == job_id
    assert context["message"]["message_id"] == header_id
    assert context["message"]["sent_at"] == datetime(2026, 1, 5, 9, tzinfo=UTC)
    assert context["message"]["headers"] == {"x-mailer": "test"}
    assert context["store"]["id"] == store_id
    assert context["conversation"]["id"] == context["message"]["conversation_id"]
    assert context["reply"] is None
    assert context["recent_replies"] == 0

    store = db.get_store(store_id)
    assert store is not None and store["credits"] == 1
    assert any(row["id"] == store_id for row in db.list_active_stores())
    assert db.get_store(str(uuid.uuid4())) is None


def test_reserve_credit_is_idempotent_per_job(db: Database) -> None:
    store_id = new_store(db, credits=1)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())

    assert db.reserve_credit(store_id, first) == "reserved"
    assert db.reserve_credit(store_id, first) == "already_reserved"
    assert db.reserve_credit(store_id, second) == "no_credits"
    assert db.release_credit(store_id, first, "refund") is True
    assert db.release_credit(store_id, first, "refund") is False
    assert db.admin_add_credits(store_id, 5) == 6


def test_reserve_reply_checks_the_cap_by_normalised_address_and_the_hourly_rate(
    db: Database,
) -> None:
    store_id = new_store(db, credits=10)
    jobs = [str(uuid.uuid4()) for _ in range(5)]

    def reserve(job: str, to: str, per_hour: int | None = None) -> str:
        return db.reserve_reply(store_id, job, to, cap=2, window_hours=24, per_hour=per_hour)

    assert reserve(jobs[0], "Ana.Souza@gmail.com") == "reserved"
    assert reserve(jobs[0], "Ana.Souza@gmail.com") == "already_reserved"
    assert reserve(jobs[1], "anasouza+x@googlemail.com") == "reserved"
    assert reserve(jobs[2], "ANA.SOUZA@GMAIL.COM") == "reply_cap"
    assert reserve(jobs[3], "bia@example.com", per_hour=2) == "rate_limited"
    assert reserve(jobs[4], "bia@example.com", per_hour=3) == "reserved"


def test_store_secrets_round_trip_through_vault(db: Database) -> None:
    store_id = new_store(db)
    secrets = db.get_store_secrets(store_id)
    assert secrets["imap_password"] == "test-imap-pw"
    assert secrets["smtp_password"] == "test-smtp-pw"
    updated = db.admin_update_store(store_id, {"reply_tone": "formal"})
    assert updated["id"] == store_id and updated["reply_tone"] == "formal"
    assert updated["updated_at"].tzinfo is UTC


def test_validate_store_settings_lists_problems_as_strings(db: Database) -> None:
    store_id = new_store(db)
    assert db.validate_store_settings({"reply_tone": "formal"}, store_id) == []
    assert db.validate_store_settings({"smtp_tls": "plain"}, store_id) == []  # on loopback
    assert db.validate_store_settings({"imap_port": 0}, store_id) == [
        "imap_port must be between 1 and 65535"
    ]
    assert db.validate_store_settings({"name": " ", "imap_tls": "plain"}) == [
        "name is required",
        "support_email must be an email address",
        "imap_host is required",
        "imap_port must be between 1 and 65535",
        "imap_user is required",
        "smtp_host is required",
        "smtp_port must be between 1 and 65535",
        "smtp_user is required",
    ]


def test_both_backends_return_identical_values(pg_db: Database, rest_db: Database) -> None:
    job_type = unique("t")
    store_id = str(uuid.uuid4())
    job_id = pg_db.enqueue_job(job_type, {"x": [1, "a", None]}, store_id=store_id)
    rest_db.dequeue_jobs(WORKER, job_types=[job_type])

    via_pg = pg_db.get_job(job_id)
    via_rest = rest_db.get_job(job_id)

    assert via_pg == via_rest
    assert via_pg is not None
    assert {type(value) for value in via_pg.values()} <= {
        str,
        int,
        bool,
        dict,
        list,
        datetime,
        type(None),
    }
    assert pg_db.get_job_events(job_id) == rest_db.get_job_events(job_id)


def test_psycopg_rows_already_hold_the_common_types(database_url: str) -> None:
    # Database passes psycopg rows through unconverted (returns_common_types): its loaders must
    # produce exactly what normalize_row would, for every type our functions return.
    transport = PgTransport(database_url, timeout_seconds=10, max_size=1)
    try:
        with transport._pool.connection() as conn:
            row = conn.execute(
                "select gen_random_uuid() as id, array[gen_random_uuid()] as ids,"
                " now() as created_at, timestamp '2026-01-02 03:04:05' as plain_at,"
                " 12::numeric as whole, 1.5::numeric as half, 'NaN'::numeric as nan,"
                ' \'{"a": [1, 2.5, "2026-01-02"]}\'::jsonb as doc, null::uuid as missing'
            ).fetchone()
    finally:
        transport.close()
    assert row is not None
    as_dict = dict(
        zip(
            ["id", "ids", "created_at", "plain_at", "whole", "half", "nan", "doc", "missing"],
            row,
            strict=True,
        )
    )
    assert normalize_row(as_dict) == as_dict
    assert {k: type(v) for k, v in as_dict.items() if k != "nan"} == {
        "id": str,
        "ids": list,
        "created_at": datetime,
        "plain_at": datetime,
        "whole": int,
        "half": float,
        "doc": dict,
        "missing": type(None),
    }
    assert isinstance(as_dict["nan"], float)
    assert as_dict["created_at"].tzinfo is UTC and as_dict["plain_at"].tzinfo is UTC
    assert type(as_dict["ids"][0]) is str


def test_rows_are_the_same_with_and_without_conversion(database_url: str) -> None:
    # The pass-through must not change what callers see: the same call through a Database that
    # converts every row gives equal values of equal types.
    job_type = unique("t")
    passing = Database(PgTransport(database_url, timeout_seconds=10, max_size=1))
    converting = Database(PgTransport(database_url, timeout_seconds=10, max_size=1))
    converting._convert_rows = True
    try:
        job_id = passing.enqueue_job(job_type, {"n": 1}, conversation_id=str(uuid.uuid4()))
        [claimed] = passing.dequeue_jobs(WORKER, job_types=[job_type])
        assert claimed == converting.get_job(job_id) == passing.get_job(job_id)
        same = converting.get_job(job_id)
        assert same is not None
        assert {k: type(v) for k, v in claimed.items()} == {k: type(v) for k, v in same.items()}
    finally:
        passing.close()
        converting.close()


# -- errors -----------------------------------------------------------------------------------


def test_sql_errors_are_permanent_with_their_sqlstate(db: Database) -> None:
    job_type = unique("t")
    job_id = db.enqueue_job(job_type, {})
    claim_one(db, job_type)

    with pytest.raises(DatabaseConstraintError) as raised:
        db.fail_job(job_id, WORKER, "x", error_type="bogus")  # type: ignore[arg-type]
    assert raised.value.code == "22023"
    assert raised.value.error_type == "permanent"

    with pytest.raises(DatabaseConstraintError) as bad_uuid:
        db.get_job("not-a-uuid")
    assert bad_uuid.value.code == "22P02"


def test_connection_refused_is_transient() -> None:
    port = closed_port()
    backends = [
        Database(
            PgTransport(
                f"postgresql://postgres:postgres@127.0.0.1:{port}/postgres",
                timeout_seconds=1,
                min_size=0,
                max_size=1,
            )
        ),
        Database(RestTransport(f"http://127.0.0.1:{port}", "test-key", timeout_seconds=1)),
    ]
    for db in backends:
        try:
            with pytest.raises(DatabaseError) as raised:
                db.circuit_allow("x")
            assert raised.value.error_type == "transient"
            with pytest.raises(DatabaseError):
                db.ping()
        finally:
            db.close()


def test_gateway_without_its_database_answers_503_which_is_transient() -> None:
    port = closed_port()
    gateway = RpcGateway(
        f"postgresql://authenticator:postgres@127.0.0.1:{port}/postgres", pool_timeout=1
    )
    db = Database(RestTransport(gateway.url, gateway.make_jwt("service_role"), timeout_seconds=30))
    try:
        with pytest.raises(DatabaseError) as raised:
            db.circuit_allow("x")
        assert raised.value.code == "PGRST000"
    finally:
        db.close()
        gateway.close()


def test_ping_succeeds_on_both(db: Database) -> None:
    db.ping()


# -- the gateway's JWT roles ------------------------------------------------------------------


@pytest.mark.parametrize(("role", "status"), [("anon", 401), ("authenticated", 403)])
def test_queue_functions_refuse_anon_and_authenticated(
    gateway: GatewayHandle, role: str, status: int
) -> None:
    token = gateway.make_jwt(role, sub=str(uuid.uuid4()))
    db = Database(RestTransport(gateway.base_url, token, timeout_seconds=10))
    try:
        with pytest.raises(DatabaseConstraintError) as raised:
            db.enqueue_job(unique("t"), {})
        assert raised.value.code == "42501"
        with pytest.raises(DatabaseConstraintError):
            db.dequeue_jobs(WORKER)
    finally:
        db.close()

    answer = httpx.post(
        f"{gateway.base_url}/rest/v1/rpc/enqueue_job",
        json={"p_job_type": "x", "p_payload": {}},
        headers={"apikey": token, "Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == status
    assert answer.json()["code"] == "42501"


def test_gateway_rejects_bad_tokens_and_unknown_functions(gateway: GatewayHandle) -> None:
    rpc = f"{gateway.base_url}/rest/v1/rpc"
    key = gateway.service_role_jwt
    forged = gateway.make_jwt("service_role")[:-4] + "AAAA"

    no_key = httpx.post(f"{rpc}/queue_stats", json={})
    assert no_key.status_code == 401
    bad_jwt = httpx.post(
        f"{rpc}/queue_stats", json={}, headers={"apikey": key, "Authorization": f"Bearer {forged}"}
    )
    assert (bad_jwt.status_code, bad_jwt.json()["code"]) == (401, "PGRST301")
    unknown = httpx.post(
        f"{rpc}/no_such_function",
        json={},
        headers={"apikey": key, "Authorization": f"Bearer {key}"},
    )
    assert (unknown.status_code, unknown.json()["code"]) == (404, "PGRST202")
    void = httpx.post(
        f"{rpc}/aggregate_queue_metrics",
        json={},
        headers={"apikey": key, "Authorization": f"Bearer {key}"},
    )
    assert (void.status_code, void.content) == (204, b"")
