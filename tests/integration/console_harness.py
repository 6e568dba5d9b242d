"""The console's test world, shared by the API and browser tests: people created through the
Auth stand-in's admin API, two stores with held replies and dead letters seeded in SQL, and the
worker's Flask app with the console switched on (psycopg backend, real Postgres)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from typing import Any

import psycopg
from flask import Flask
from flask.testing import FlaskClient

from tests.support.auth import TEST_JWT_SECRET, anon_key, service_role_key
from worker import db as dbmod
from worker import process
from worker.app import create_app
from worker.config import Settings, load_settings
from worker.console.auth_client import AuthClient, Tokens
from worker.console.identity import csrf_token, verify_access_token
from worker.console.sending import SendReplyHandler
from worker.queue.handlers import Handlers
from worker.runs import Budget

PASSWORD = "correct horse battery"
ROLES = ("owner", "agent", "stranger", "operator")


@dataclasses.dataclass(frozen=True)
class ConsolePerson:
    """Someone who signs in to the console."""

    role: str
    email: str
    user_id: str
    password: str = PASSWORD


@dataclasses.dataclass
class AppServices:
    """What create_app needs: settings, the database, and no runners."""

    settings: Settings
    db: dbmod.Database
    runners: dict[str, Any] = dataclasses.field(default_factory=dict)

    def close(self) -> None:
        self.db.close()


def console_settings(dsn: str, auth_url: str, **extra: str) -> Settings:
    """Worker settings with the console on, against the test database and Auth stand-in."""
    return load_settings(
        {
            "DATABASE_URL": dsn,
            "WORKER_SECRET": "test-worker-secret-0123456789",
            "SUPABASE_AUTH_URL": auth_url,
            "SUPABASE_ANON_KEY": anon_key(TEST_JWT_SECRET),
            "SUPABASE_JWT_SECRET": TEST_JWT_SECRET,
            **extra,
        }
    )


def console_app(settings: Settings) -> tuple[Flask, AppServices]:
    """The worker's app with the console, over a small pool."""
    services = AppServices(settings, dbmod.connect(settings, max_size=8))
    app = create_app(settings, services=services)  # type: ignore[arg-type]
    app.testing = True
    return app, services


def create_people(auth: AuthClient, tag: str) -> dict[str, ConsolePerson]:
    """One person per role, created through the Auth admin API."""
    admin = service_role_key(TEST_JWT_SECRET)
    people = {}
    for role in ROLES:
        email = f"{role}-{tag}@example.test"
        user_id = auth.create_user(admin, email, PASSWORD, operator=(role == "operator"))
        people[role] = ConsolePerson(role, email, user_id)
    return people


def seed_store(
    sql: psycopg.Connection[Any], owner_id: str | None, name: str, *, credits: int = 10
) -> str:
    """A store row (no mailbox needed: nothing here fetches or sends)."""
    row = sql.execute(
        "insert into public.stores (owner_id, name, support_email, imap_host, imap_port,"
        " imap_user, smtp_host, smtp_port, smtp_user, credits)"
        " values (%s, %s, %s, 'imap.invalid', 993, 'x', 'smtp.invalid', 587, 'x', %s)"
        " returning id::text",
        (owner_id, name, f"help@{uuid.uuid4().hex[:8]}.test", credits),
    ).fetchone()
    assert row is not None
    return str(row["id"])


@dataclasses.dataclass(frozen=True)
class Held:
    """A conversation whose pipeline reply waits for a person."""

    conversation_id: str
    message_id: str
    reply_id: str
    job_id: str


def seed_held(
    sql: psycopg.Connection[Any],
    store_id: str,
    *,
    subject: str = "My order #1001 never came",
    customer: str = "ana@customer.test",
    draft: str = "Hello! Your order is on its way.",
    hold_reason: str = "needs_human",
) -> Held:
    """A customer message, its charged and held draft, as the pipeline leaves them."""
    conv = sql.execute(
        "insert into public.conversations (store_id, customer_email, subject)"
        " values (%s, %s, %s) returning id::text",
        (store_id, customer, subject),
    ).fetchone()
    assert conv is not None
    header_id = f"<{uuid.uuid4().hex}@customer.test>"
    message = sql.execute(
        "insert into public.messages (store_id, conversation_id, message_id, from_address,"
        " subject, body_text) values (%s, %s, %s, %s, %s, %s) returning id::text",
        (store_id, conv["id"], header_id, customer, subject, "Where is it? Order #1001."),
    ).fetchone()
    assert message is not None
    job_id = str(uuid.uuid4())
    sql.execute("select public.reserve_credit(%s, %s)", (store_id, job_id))
    reply = sql.execute(
        "insert into public.replies (store_id, conversation_id, message_id, job_id, status,"
        " to_address, subject, body_text, smtp_message_id, in_reply_to, hold_reason)"
        " values (%s, %s, %s, %s, 'held', %s, %s, %s, %s, %s, %s) returning id::text",
        (
            store_id, conv["id"], message["id"], job_id, customer, f"Re: {subject}", draft,
            f"<reply-{job_id}@shop.test>", header_id, hold_reason,
        ),
    ).fetchone()
    assert reply is not None
    return Held(str(conv["id"]), str(message["id"]), str(reply["id"]), job_id)


def seed_dead_letter(sql: psycopg.Connection[Any], store_id: str) -> str:
    """A dead-lettered job of the store."""
    row = sql.execute(
        "insert into public.job_queue (job_type, status, store_id, attempt_count,"
        " dead_lettered_at, last_error, last_error_type, payload)"
        " values ('console_test_dead', 'dead_letter', %s, 5, now(),"
        " 'smtp: recipient refused: SMTP 550', 'permanent', '{}') returning id::text",
        (store_id,),
    ).fetchone()
    assert row is not None
    return str(row["id"])


def bearer_client(app: Flask, tokens: Tokens) -> FlaskClient:
    """A test client that authenticates with `Authorization: Bearer`."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tokens.access_token}"
    return client


def cookie_client(app: Flask, email: str, password: str = PASSWORD) -> tuple[FlaskClient, str]:
    """A test client signed in through the /login form; returns it and its CSRF token."""
    client = app.test_client()
    response = client.post("/login", data={"email": email, "password": password})
    assert response.status_code == 302, response.data
    access = client.get_cookie("sb-access-token")
    assert access is not None
    person = verify_access_token(access.value, TEST_JWT_SECRET)
    return client, csrf_token(TEST_JWT_SECRET, person.session_id)


def json_of(response: Any) -> Mapping[str, Any]:
    data = response.get_json()
    assert isinstance(data, dict | list), response.data
    return data  # type: ignore[return-value]


def run_send_job(pipeline: Any, job_id: str) -> dict[str, Any]:
    """One process run of the real runner over one send_reply job, isolated like the pipeline
    tests isolate theirs: the job moves to the test's private type, whose handler is the
    send_reply handler. Returns the run summary."""
    pipeline.own_jobs([job_id])
    handlers = Handlers()
    handlers.register(pipeline.job_type, SendReplyHandler(pipeline.proc))
    return process.run_process(
        pipeline.proc, Budget(30.0), options=pipeline.options, handlers=handlers
    )


def park_send_jobs(sql: psycopg.Connection[Any], store_ids: list[str]) -> None:
    """Move the send_reply jobs these stores' tests left pending out of every later run's way
    (every process run claims send_reply; these stores have no real SMTP server)."""
    sql.execute(
        "update public.job_queue set job_type = 'console_test_parked'"
        " where job_type = 'send_reply' and store_id = any(%s::uuid[])",
        (store_ids,),
    )
