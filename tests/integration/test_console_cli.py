"""`python -m worker users add` (through the Auth admin API) and `stores members add`, against
the Auth stand-in and the test database; the person they create signs in to the console."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.integration.console_harness import console_app, console_settings, seed_store
from tests.support.auth import TEST_JWT_SECRET, anon_key
from worker import stores
from worker.__main__ import main
from worker.console.auth_client import AuthClient
from worker.devstack.auth import AuthServer

pytestmark = pytest.mark.integration


def _env(database_url: str, auth: AuthServer, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "SUPABASE_AUTH_URL": auth.url,
        "SUPABASE_ANON_KEY": anon_key(TEST_JWT_SECRET),
        "SUPABASE_JWT_SECRET": TEST_JWT_SECRET,
        **extra,
    }


def test_users_add_then_members_add_then_sign_in(
    database_url: str, auth_server: AuthServer, capsys: pytest.CaptureFixture[str]
) -> None:
    email = f"Agent-{uuid.uuid4().hex[:8]}@Example.test"
    env = _env(database_url, auth_server, CONSOLE_USER_PASSWORD="a long enough password")
    assert main(["users", "add", "--email", email], environ=env) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["email"] == email.lower() and created["operator"] is False

    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as sql:
        row = sql.execute(
            "select encrypted_password, email_confirmed_at, raw_app_meta_data"
            " from auth.users where id = %s", (created["user_id"],)
        ).fetchone()
        assert row is not None
        assert row["encrypted_password"].startswith("$2a$10$")  # bcrypt, as GoTrue stores it
        assert row["email_confirmed_at"] is not None
        assert row["raw_app_meta_data"] == {"provider": "email", "providers": ["email"]}
        store = seed_store(sql, None, "CLI store")

    assert stores.main(["members", "add", store, "--email", email, "--role", "agent"],
                       environ=env) == 0
    assert json.loads(capsys.readouterr().out)["role"] == "agent"
    assert stores.main(["members", "add", store, "--email", "nobody@example.test",
                        "--role", "agent"], environ=env) == 1
    assert main(["users", "add", "--email", email], environ=env) == 1  # already registered

    app, services = console_app(console_settings(database_url, auth_server.url))
    try:
        client = app.test_client()
        response = client.post("/login", data={"email": email,
                                               "password": "a long enough password"})
        assert response.status_code == 302
        me = client.get("/api/me").get_json()
        assert [(m["store_id"], m["role"]) for m in me["memberships"]] == [(store, "agent")]
    finally:
        services.close()


def test_users_add_operator_and_refusals(
    database_url: str, auth_server: AuthServer, capsys: pytest.CaptureFixture[str]
) -> None:
    email = f"op-{uuid.uuid4().hex[:8]}@example.test"
    env = _env(database_url, auth_server)
    # No password variable and no terminal: a usage error, nothing created.
    assert main(["users", "add", "--email", email], environ=env) == 2
    answers = iter(["operator password 1", "operator password 1"])
    from worker import users

    assert users.main(["add", "--email", email, "--operator"], environ=env,
                      prompt=lambda _text: next(answers)) == 0
    assert json.loads(capsys.readouterr().out)["operator"] is True
    auth = AuthClient(auth_server.url, anon_key(TEST_JWT_SECRET))
    try:
        tokens = auth.sign_in(email, "operator password 1")
    finally:
        auth.close()
    claims = json.loads(
        __import__("base64").urlsafe_b64decode(tokens.access_token.split(".")[1] + "==")
    )
    assert claims["app_metadata"]["operator"] is True
    assert claims["aud"] == "authenticated" and claims["role"] == "authenticated"
    assert claims["session_id"] and claims["sub"]
    weak = _env(database_url, auth_server, CONSOLE_USER_PASSWORD="123")
    assert main(["users", "add", "--email", f"weak-{email}"], environ=weak) == 1
