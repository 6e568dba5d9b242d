"""The supabase-py backend against canned PostgREST answers (respx), and the pure rules both
backends share: result normalisation, optional arguments and error classification."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
import respx

from worker.config import Settings
from worker.db import Database, connect
from worker.db.pg import adapt, build_call, error_from_psycopg
from worker.db.rest import RestTransport
from worker.db.types import Shape, is_transient_code, normalize_row
from worker.errors import ConfigError, DatabaseConstraintError, DatabaseError

BASE = "http://rest.test"
RPC = f"{BASE}/rest/v1/rpc"
# A legacy service_role key is a JWT (three dot-separated parts); a throwaway value the fake
# server does not check.
KEY = "test-header.test-service-role-claims.test-signature"


@pytest.fixture
def transport() -> Any:
    rest = RestTransport(BASE, KEY, timeout_seconds=2.5)
    yield rest
    rest.close()


@pytest.fixture
def api() -> Any:
    with respx.mock(assert_all_called=False) as router:
        yield router


# -- requests and shapes ---------------------------------------------------------------------


def test_rpc_posts_named_arguments_with_supabase_headers(
    transport: RestTransport, api: Any
) -> None:
    job_id = str(uuid.uuid4())
    route = api.post(f"{RPC}/enqueue_job").mock(return_value=httpx.Response(200, json=job_id))

    result = Database(transport).enqueue_job("process_email", {"message_id": "m1"}, priority=3)

    assert result == job_id
    request = route.calls.last.request
    assert json.loads(request.content) == {
        "p_job_type": "process_email",
        "p_payload": {"message_id": "m1"},
        "p_priority": 3,
    }
    assert request.headers["apikey"] == KEY
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-profile"] == "public"


def test_explicit_timeout_reaches_the_http_client(transport: RestTransport) -> None:
    timeout = transport._http.timeout
    assert (timeout.connect, timeout.read, timeout.write, timeout.pool) == (2.5, 2.5, 2.5, 2.5)


def test_rows_are_normalised_like_psycopg_rows(transport: RestTransport, api: Any) -> None:
    job = {
        "id": str(uuid.uuid4()),
        "status": "processing",
        "payload": {"message_id": "m1", "sent_at": "not parsed inside jsonb"},
        "attempt_count": 1,
        "locked_until": "2026-01-02T03:04:05.123456+02:00",
        "created_at": "2026-01-02T01:00:00+00:00",
        "completed_at": None,
    }
    api.post(f"{RPC}/dequeue_jobs").mock(return_value=httpx.Response(200, json=[job]))

    [row] = Database(transport).dequeue_jobs("w1", batch_size=1)

    assert row["id"] == job["id"]
    assert row["locked_until"] == datetime(2026, 1, 2, 1, 4, 5, 123456, tzinfo=UTC)
    assert row["locked_until"].tzinfo is UTC
    assert row["created_at"] == datetime(2026, 1, 2, 1, 0, tzinfo=UTC)
    assert row["completed_at"] is None
    assert row["payload"] == job["payload"]


def test_setof_lookup_answering_an_empty_array_is_none(transport: RestTransport, api: Any) -> None:
    api.post(f"{RPC}/get_job").mock(return_value=httpx.Response(200, json=[]))
    assert Database(transport).get_job(str(uuid.uuid4())) is None


def test_void_answer_204_is_none(transport: RestTransport, api: Any) -> None:
    route = api.post(f"{RPC}/aggregate_queue_metrics").mock(return_value=httpx.Response(204))
    assert Database(transport).aggregate_queue_metrics() is None
    assert json.loads(route.calls.last.request.content) == {}


def test_composite_answer_as_object_or_legacy_array(transport: RestTransport, api: Any) -> None:
    reply = {"id": str(uuid.uuid4()), "status": "drafted", "created_at": "2026-01-01T00:00:00Z"}
    api.post(f"{RPC}/save_reply").mock(
        side_effect=[httpx.Response(200, json=reply), httpx.Response(200, json=[reply])]
    )
    db = Database(transport)
    first = db.save_reply("j", "m", {"to_address": "a@example.com"})
    second = db.save_reply("j", "m", {"to_address": "a@example.com"})
    assert first == second
    assert first["created_at"] == datetime(2026, 1, 1, tzinfo=UTC)


def test_composite_null_is_a_permanent_error(transport: RestTransport, api: Any) -> None:
    nulls = {"id": None, "status": None}
    api.post(f"{RPC}/admin_update_store").mock(return_value=httpx.Response(200, json=nulls))
    with pytest.raises(DatabaseConstraintError, match="returned no row"):
        Database(transport).admin_update_store(str(uuid.uuid4()), {"name": "x"})


def test_load_job_context_normalises_nested_rows(transport: RestTransport, api: Any) -> None:
    context = {
        "job": {"id": "j", "created_at": "2026-01-01T00:00:00+00:00"},
        "message": {"id": "m", "sent_at": "2026-01-01T00:00:01+00:00"},
        "store": {"id": "s"},
        "conversation": {"id": "c"},
        "reply": None,
        "recent_replies": 2,
    }
    api.post(f"{RPC}/load_job_context").mock(return_value=httpx.Response(200, json=context))

    loaded = Database(transport).load_job_context("j")

    assert loaded is not None
    assert loaded["message"]["sent_at"] == datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert loaded["reply"] is None
    assert loaded["recent_replies"] == 2


# -- error mapping ---------------------------------------------------------------------------


def _body(code: str | None, message: str = "boom", **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, "details": None, "hint": None, **extra}


@pytest.mark.parametrize(
    ("status", "body", "error", "code"),
    [
        (400, _body("P0001", "job not held"), DatabaseConstraintError, "P0001"),
        (
            409,
            _body("23505", 'violates unique constraint "x_key"'),
            DatabaseConstraintError,
            "23505",
        ),
        (409, _body("23503"), DatabaseConstraintError, "23503"),
        (
            400,
            _body("22P02", "invalid input syntax for type uuid"),
            DatabaseConstraintError,
            "22P02",
        ),
        (
            404,
            _body("PGRST202", "Could not find the function"),
            DatabaseConstraintError,
            "PGRST202",
        ),
        (401, _body("PGRST301", "JWSError"), DatabaseConstraintError, "PGRST301"),
        (401, _body("42501", "permission denied"), DatabaseConstraintError, "42501"),
        (500, _body("40001", "could not serialize access"), DatabaseError, "40001"),
        (500, _body("40P01", "deadlock detected"), DatabaseError, "40P01"),
        (
            500,
            _body("57014", "canceling statement due to statement timeout"),
            DatabaseError,
            "57014",
        ),
        (503, _body("PGRST000", "Could not connect"), DatabaseError, "PGRST000"),
        (504, _body("PGRST003", "Timed out acquiring connection"), DatabaseError, "PGRST003"),
        (401, {"message": "Invalid API key"}, DatabaseConstraintError, None),
        (
            502,
            {"message": "An invalid response was received from the upstream server"},
            DatabaseError,
            None,
        ),
    ],
)
def test_postgrest_errors_are_typed(
    transport: RestTransport,
    api: Any,
    status: int,
    body: dict[str, Any],
    error: type[Exception],
    code: str | None,
) -> None:
    api.post(f"{RPC}/fail_job").mock(return_value=httpx.Response(status, json=body))

    with pytest.raises(error) as raised:
        Database(transport).fail_job("j", "w", "oops")

    assert type(raised.value) is error
    assert raised.value.code == code  # type: ignore[attr-defined]
    assert "fail_job" in str(raised.value)


def test_unique_violation_names_its_constraint(transport: RestTransport, api: Any) -> None:
    body = _body("23505", 'duplicate key value violates unique constraint "messages_store_key"')
    api.post(f"{RPC}/record_events").mock(return_value=httpx.Response(409, json=body))
    with pytest.raises(DatabaseConstraintError) as raised:
        Database(transport).record_events([])
    assert raised.value.constraint == "messages_store_key"


def test_proxy_503_without_json_is_transient_with_retry_after(
    transport: RestTransport, api: Any
) -> None:
    api.post(f"{RPC}/circuit_allow").mock(
        return_value=httpx.Response(503, text="<html>down</html>", headers={"Retry-After": "7"})
    )
    with pytest.raises(DatabaseError) as raised:
        Database(transport).circuit_allow("imap:s1")
    assert raised.value.code == "503"
    assert raised.value.retry_after == 7.0


def test_plain_4xx_without_json_is_permanent(transport: RestTransport, api: Any) -> None:
    api.post(f"{RPC}/circuit_allow").mock(return_value=httpx.Response(404, text="not here"))
    with pytest.raises(DatabaseConstraintError):
        Database(transport).circuit_allow("imap:s1")


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("eof")],
)
def test_network_failures_are_transient(
    transport: RestTransport, api: Any, failure: Exception
) -> None:
    api.post(f"{RPC}/queue_stats").mock(side_effect=failure)
    with pytest.raises(DatabaseError, match="queue_stats"):
        Database(transport).queue_stats()


def test_ping_reads_the_rest_root(transport: RestTransport, api: Any) -> None:
    api.get(f"{BASE}/rest/v1/").mock(
        side_effect=[httpx.Response(200, json={}), httpx.Response(503, json=_body("PGRST000"))]
    )
    transport.ping()
    with pytest.raises(DatabaseError) as raised:
        transport.ping()
    assert raised.value.code == "PGRST000"


# -- shared rules ----------------------------------------------------------------------------


class RecordingTransport:
    """Answers from a table and remembers every call, for Database-level rules."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[tuple[str, dict[str, Any], Shape]] = []

    def call(self, fn: str, args: Any, shape: Shape) -> Any:
        self.calls.append((fn, dict(args), shape))
        return self.answer

    def ping(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_unset_optional_arguments_are_not_sent_so_sql_defaults_apply() -> None:
    fake = RecordingTransport("pending")
    Database(fake).fail_job("j", "w", "boom")
    Database(fake).fail_job("j", "w", "boom", error_type="permanent", retry_after_seconds=0)
    assert fake.calls[0] == (
        "fail_job",
        {"p_job_id": "j", "p_worker_id": "w", "p_error": "boom"},
        "scalar",
    )
    assert fake.calls[1][1]["p_error_type"] == "permanent"
    assert fake.calls[1][1]["p_retry_after_seconds"] == 0


def test_required_arguments_are_sent_even_when_null() -> None:
    fake = RecordingTransport(True)
    Database(fake).reset_reply("r", "drafted", None)
    assert fake.calls[0][1] == {"p_reply_id": "r", "p_status": "drafted", "p_error": None}


def test_driver_values_normalise_to_the_json_ones() -> None:
    job_id = uuid.uuid4()
    local = timezone(timedelta(hours=2))
    row = normalize_row(
        {
            "id": job_id,
            "ids": [job_id],
            "created_at": datetime(2026, 1, 1, 12, tzinfo=local),
            "ratio": Decimal("1.5"),
            "count": Decimal("3"),
            "name_at": "not a timestamp",
        }
    )
    assert row == {
        "id": str(job_id),
        "ids": [str(job_id)],
        "created_at": datetime(2026, 1, 1, 10, tzinfo=UTC),
        "ratio": 1.5,
        "count": 3,
        "name_at": "not a timestamp",
    }
    assert row["created_at"].tzinfo is UTC


@pytest.mark.parametrize(
    ("code", "transient"),
    [
        ("08006", True),
        ("40001", True),
        ("40P01", True),
        ("53300", True),
        ("57014", True),
        ("55P03", True),
        ("PGRST002", True),
        ("23505", False),
        ("22P02", False),
        ("P0001", False),
        ("42501", False),
        ("PGRST116", False),
        (None, False),
        ("503", False),
    ],
)
def test_sqlstate_classification(code: str | None, transient: bool) -> None:
    assert is_transient_code(code) is transient


def test_psycopg_errors_map_by_sqlstate_then_class() -> None:
    unique = error_from_psycopg("enqueue_job", psycopg.errors.UniqueViolation("dup"))
    assert isinstance(unique, DatabaseConstraintError) and unique.code == "23505"
    raised = error_from_psycopg("fail_job", psycopg.errors.RaiseException("not held"))
    assert isinstance(raised, DatabaseConstraintError) and raised.code == "P0001"
    serial = error_from_psycopg("dequeue_jobs", psycopg.errors.SerializationFailure("retry"))
    assert isinstance(serial, DatabaseError) and serial.code == "40001"
    refused = error_from_psycopg("ping", psycopg.OperationalError("connection refused"))
    assert isinstance(refused, DatabaseError) and refused.code is None
    client_side = error_from_psycopg("x", psycopg.ProgrammingError("bad query"))
    assert isinstance(client_side, DatabaseConstraintError)


def test_pg_call_casts_each_argument_to_its_declared_type() -> None:
    signature = {"p_worker_id": "text", "p_job_ids": "uuid[]", "p_lease_seconds": "integer"}
    query = build_call("extend_lease", signature, {"p_worker_id": "w", "p_job_ids": []}, "scalar")
    text = query.as_string(None)
    assert text == (
        'select "public"."extend_lease"("p_worker_id" => %(p_worker_id)s::text, '
        '"p_job_ids" => %(p_job_ids)s::uuid[])'
    )
    rows = build_call("get_job", {"p_job_id": "uuid"}, {"p_job_id": "j"}, "rows").as_string(None)
    assert rows.startswith('select * from "public"."get_job"(')


def test_pg_adapts_json_parameters() -> None:
    wrapped = adapt({"a": 1}, "jsonb")
    assert isinstance(wrapped, psycopg.types.json.Jsonb) and wrapped.obj == {"a": 1}
    assert adapt(None, "jsonb") is None
    assert adapt(["x"], "uuid[]") == ["x"]


def test_connect_picks_the_rest_backend_from_supabase_settings() -> None:
    settings = Settings(supabase_url=BASE, supabase_service_role_key=KEY, db_timeout_seconds=4)
    db = connect(settings)
    try:
        assert isinstance(db.transport, RestTransport)
        assert db.transport._http.timeout.read == 4
    finally:
        db.close()


def test_connect_without_a_database_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        connect(Settings())


# -- secret API keys and paging --------------------------------------------------------------

SECRET_KEY = "sb_secret_unit-test-value"
LEGACY_JWT = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJl"  # not verified


def test_a_secret_key_goes_only_in_the_apikey_header(api: Any) -> None:
    route = api.post(f"{RPC}/circuit_allow").mock(return_value=httpx.Response(200, json=True))
    db = connect(Settings(supabase_url=BASE, supabase_secret_key=SECRET_KEY))
    try:
        assert db.circuit_allow("claude") is True
    finally:
        db.close()
    request = route.calls.last.request
    assert request.headers["apikey"] == SECRET_KEY
    # PostgREST would reject the opaque key as a malformed JWT (PGRST301).
    assert "authorization" not in request.headers


def test_a_legacy_jwt_key_is_also_the_bearer(api: Any) -> None:
    route = api.post(f"{RPC}/circuit_allow").mock(return_value=httpx.Response(200, json=True))
    db = connect(Settings(supabase_url=BASE, supabase_service_role_key=LEGACY_JWT))
    try:
        db.circuit_allow("claude")
    finally:
        db.close()
    assert route.calls.last.request.headers["authorization"] == f"Bearer {LEGACY_JWT}"


def _paged_answers(rows: list[dict[str, Any]], cap: int) -> Any:
    # PostgREST: ?offset=&limit= on the function's rows, then its max-rows cap.
    def answer(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params.get("offset", "0"))
        limit = int(request.url.params["limit"])
        return httpx.Response(200, json=rows[offset : offset + min(limit, cap)])

    return answer


@pytest.mark.parametrize("cap", [2, 1000])
def test_listings_page_through_a_capped_server(api: Any, cap: int) -> None:
    stores = [{"id": str(uuid.uuid4()), "name": f"s{i}"} for i in range(5)]
    route = api.post(f"{RPC}/list_active_stores").mock(side_effect=_paged_answers(stores, cap))
    rest = RestTransport(BASE, KEY, page_rows=3)
    try:
        assert [s["id"] for s in Database(rest).list_active_stores()] == [s["id"] for s in stores]
    finally:
        rest.close()
    offsets = [int(call.request.url.params["offset"]) for call in route.calls]
    # Pages follow the rows received, until an empty page ends the listing.
    assert offsets == ([0, 2, 4, 5] if cap == 2 else [0, 3, 5])


def test_a_claim_is_never_paged(transport: RestTransport, api: Any) -> None:
    # A second page of dequeue_jobs would claim a second batch.
    route = api.post(f"{RPC}/dequeue_jobs").mock(return_value=httpx.Response(200, json=[]))
    Database(transport).dequeue_jobs("w", batch_size=5)
    assert route.call_count == 1
    assert "offset" not in route.calls.last.request.url.params
