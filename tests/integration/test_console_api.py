"""The console's JSON API against the real stack: Postgres, the Auth stand-in (sign-in through
supabase-py's auth client), and for sending, the SMTP sink behind the real pipeline.

Covers sign-in and refresh, the tenancy matrix (owner, agent, stranger, operator, signed out),
CSRF refusal, and that concurrent approvals of one held reply send it exactly once.
"""

# The pipeline harness's fixtures are imported by name, which ruff reads as redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import psycopg
import pytest
from flask import Flask
from psycopg.rows import dict_row

from tests.integration.console_harness import (
    PASSWORD,
    AppServices,
    ConsolePerson,
    Held,
    bearer_client,
    console_app,
    console_settings,
    cookie_client,
    create_people,
    park_send_jobs,
    run_send_job,
    seed_dead_letter,
    seed_held,
    seed_store,
)
from tests.integration.test_process_pipeline import (
    Pipeline,
    make_email,
    pipeline,  # noqa: F401  (a fixture)
    pipeline_dsn,  # noqa: F401  (a fixture)
    sql,  # noqa: F401  (a fixture)
)
from tests.support.auth import TEST_JWT_SECRET, anon_key
from tests.support.gateway import GatewayHandle
from worker.console.auth_client import AuthClient, SignInRefused, Tokens
from worker.console.identity import verify_access_token
from worker.db import Database
from worker.db.rest import RestTransport
from worker.devstack.auth import AuthServer
from worker.errors import DatabaseConstraintError

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class World:
    app: Flask
    services: AppServices
    auth: AuthClient
    sql: psycopg.Connection[Any]
    people: dict[str, ConsolePerson]
    store_a: str
    store_b: str
    held_a: Held
    held_a2: Held
    held_b: Held
    dead_a: str
    dead_b: str
    _tokens: dict[str, Tokens] = dataclasses.field(default_factory=dict)

    def tokens(self, role: str) -> Tokens:
        if role not in self._tokens:
            self._tokens[role] = self.auth.sign_in(self.people[role].email, PASSWORD)
        return self._tokens[role]

    def client(self, role: str | None) -> Any:
        if role is None:
            return self.app.test_client()
        return bearer_client(self.app, self.tokens(role))


@pytest.fixture(scope="module")
def world(database_url: str, auth_server: AuthServer) -> Iterator[World]:
    settings = console_settings(database_url, auth_server.url)
    app, services = console_app(settings)
    auth = AuthClient(auth_server.url, anon_key(TEST_JWT_SECRET))
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as sql:
        people = create_people(auth, uuid.uuid4().hex[:8])
        store_a = seed_store(sql, people["owner"].user_id, "Store A")
        store_b = seed_store(sql, None, "Store B")
        services.db.add_store_member(store_a, people["agent"].email, "agent")
        yield World(
            app=app,
            services=services,
            auth=auth,
            sql=sql,
            people=people,
            store_a=store_a,
            store_b=store_b,
            held_a=seed_held(sql, store_a),
            held_a2=seed_held(sql, store_a, subject="Broken mug", customer="bia@customer.test"),
            held_b=seed_held(sql, store_b, subject="Refund", customer="yan@customer.test"),
            dead_a=seed_dead_letter(sql, store_a),
            dead_b=seed_dead_letter(sql, store_b),
        )
    services.close()
    auth.close()


@pytest.fixture(autouse=True)
def _park_send_jobs(world: World) -> Iterator[None]:
    # Every process run claims send_reply jobs; the ones approved here for stores without a
    # real SMTP server must not reach a later test's run.
    yield
    park_send_jobs(world.sql, [world.store_a, world.store_b])


# -- sign-in, refresh, sign-out ------------------------------------------------------------------


def test_sign_in_sets_httponly_samesite_cookies(world: World) -> None:
    client = world.app.test_client()
    response = client.post(
        "/login", data={"email": world.people["owner"].email, "password": PASSWORD,
                        "next": "/console/conversations"}
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/console/conversations"
    cookies = response.headers.getlist("Set-Cookie")
    access = next(c for c in cookies if c.startswith("sb-access-token="))
    assert "HttpOnly" in access and "SameSite=Lax" in access
    # Loopback (the test client's "localhost") gets no Secure flag; any other host does.
    assert "Secure" not in access
    me = client.get("/api/me")
    assert me.status_code == 200
    body = me.get_json()
    assert body["email"] == world.people["owner"].email
    assert body["operator"] is False
    assert [m["store_id"] for m in body["memberships"]] == [world.store_a]


def test_cookies_are_secure_on_a_public_host(world: World) -> None:
    client = world.app.test_client()
    response = client.post(
        "/login",
        data={"email": world.people["owner"].email, "password": PASSWORD},
        base_url="https://console.example.com",
    )
    assert response.status_code == 302
    assert all("Secure" in c for c in response.headers.getlist("Set-Cookie"))


def test_wrong_password_is_refused(world: World) -> None:
    response = world.app.test_client().post(
        "/login", data={"email": world.people["owner"].email, "password": "nope-nope"}
    )
    assert response.status_code == 401
    assert b"Wrong email or password" in response.data
    assert not response.headers.getlist("Set-Cookie")
    with pytest.raises(SignInRefused):
        world.auth.sign_in(world.people["owner"].email, "nope-nope")


def test_signed_out_gets_401_json_and_pages_redirect(world: World) -> None:
    client = world.app.test_client()
    response = client.get("/api/conversations")
    assert response.status_code == 401
    assert response.get_json()["error"] == "signed_out"
    page = client.get("/console/conversations?status=waiting")
    assert page.status_code == 302
    assert page.headers["Location"].startswith("/login?next=")


def test_forged_and_expired_tokens_are_refused(world: World) -> None:
    claims = jwt.decode(world.tokens("owner").access_token, options={"verify_signature": False})
    forged = jwt.encode(claims, "another-secret-that-is-long-enough-to-sign", algorithm="HS256")
    expired = jwt.encode({**claims, "exp": int(time.time()) - 5}, TEST_JWT_SECRET, "HS256")
    wrong_aud = jwt.encode({**claims, "aud": "other"}, TEST_JWT_SECRET, "HS256")
    for token in (forged, expired, wrong_aud):
        client = world.app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        assert client.get("/api/me").status_code == 401


def test_an_expiring_session_is_refreshed_and_the_token_rotated(world: World) -> None:
    client, _csrf = cookie_client(world.app, world.people["agent"].email)
    refresh_before = client.get_cookie("sb-refresh-token")
    access_before = client.get_cookie("sb-access-token")
    assert refresh_before is not None and access_before is not None
    # The browser still holds an access token that expired a minute ago.
    claims = jwt.decode(access_before.value, options={"verify_signature": False})
    stale = jwt.encode({**claims, "exp": int(time.time()) - 60}, TEST_JWT_SECRET, "HS256")
    client.set_cookie("sb-access-token", stale)
    response = client.get("/api/me")
    assert response.status_code == 200
    assert response.get_json()["email"] == world.people["agent"].email
    refresh_after = client.get_cookie("sb-refresh-token")
    access_after = client.get_cookie("sb-access-token")
    assert refresh_after is not None and access_after is not None
    assert refresh_after.value != refresh_before.value
    assert access_after.value != stale
    row = world.sql.execute(
        "select revoked, (select parent from auth.refresh_tokens where token = %s) as parent"
        " from auth.refresh_tokens where token = %s",
        (refresh_after.value, refresh_before.value),
    ).fetchone()
    assert row == {"revoked": True, "parent": refresh_before.value}


def test_sign_out_ends_the_session_at_auth(world: World) -> None:
    client, csrf = cookie_client(world.app, world.people["agent"].email)
    refresh = client.get_cookie("sb-refresh-token")
    assert refresh is not None
    refused = client.post("/logout")
    assert refused.status_code == 403  # a cookie write without the CSRF header
    response = client.post("/logout", headers={"X-CSRF-Token": csrf})
    assert response.status_code == 302
    assert client.get_cookie("sb-access-token") is None
    with pytest.raises(SignInRefused):
        world.auth.refresh(refresh.value)


# -- CSRF --------------------------------------------------------------------------------------


def test_cookie_writes_need_the_pages_csrf_token(world: World) -> None:
    client, csrf = cookie_client(world.app, world.people["owner"].email)
    url = f"/api/replies/{world.held_a2.reply_id}/discard"
    assert client.post(url, json={}).status_code == 403
    assert client.post(url, json={}, headers={"X-CSRF-Token": "0" * 64}).status_code == 403
    page = client.get(f"/console/conversations/{world.held_a2.conversation_id}")
    assert page.status_code == 200
    assert f'<meta name="csrf-token" content="{csrf}">'.encode() in page.data
    ok = client.post(url, json={"note": "dup"}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200, ok.data
    assert ok.get_json()["status"] == "discarded"


def test_bearer_writes_need_no_csrf_token(world: World) -> None:
    client = world.client("owner")
    held = seed_held(world.sql, world.store_a, subject="Call me", customer="cal@customer.test")
    response = client.post(f"/api/conversations/{held.conversation_id}/close",
                           json={"note": "handled by phone"})
    assert response.status_code == 200, response.data
    again = client.post(f"/api/conversations/{held.conversation_id}/close", json={})
    assert again.status_code == 409
    assert again.get_json()["error"] == "conflict"


def test_a_reply_a_person_sent_from_their_mail_client_shows_who_answered(world: World) -> None:
    held = seed_held(world.sql, world.store_a, subject="Gift wrap?", customer="gil@customer.test")
    header = world.sql.execute(
        "select message_id from public.messages where id = %s", (held.message_id,)
    ).fetchone()
    assert header is not None
    # What the Sent scan records when Maria's answer (In-Reply-To the customer's) is read.
    world.sql.execute(
        "select public.record_sent_scan(%s, 'Sent', 1, 1, %s::jsonb)",
        (
            world.store_a,
            json.dumps(
                [
                    {
                        "uid": 1,
                        "message_id": f"<maria-{uuid.uuid4().hex}@shop.test>",
                        "in_reply_to": header["message_id"],
                        "references": [],
                        "from": "Maria Silva <help@shop.test>",
                    }
                ]
            ),
        ),
    )
    client, _ = cookie_client(world.app, world.people["agent"].email)
    page = client.get(f"/console/conversations/{held.conversation_id}")
    assert page.status_code == 200
    html = page.data.decode()
    assert "answered by Maria Silva &lt;help@shop.test&gt; from their mail client" in html
    assert "answered by a person" in html  # the conversation's status
    assert "Send this reply" not in html  # nothing left to send
    refused = world.client("owner").post(f"/api/replies/{held.reply_id}/send", json={})
    assert refused.status_code == 409


# -- tenancy matrix ----------------------------------------------------------------------------

READ_A = {"owner": 200, "agent": 200, "stranger": 403, "operator": 200, None: 401}
READ_B = {"owner": 403, "agent": 403, "stranger": 403, "operator": 200, None: 401}


@pytest.mark.parametrize("role", ["owner", "agent", "stranger", "operator", None])
def test_tenancy_matrix_reads(world: World, role: str | None) -> None:
    client = world.client(role)
    a = client.get(f"/api/conversations/{world.held_a.conversation_id}")
    b = client.get(f"/api/conversations/{world.held_b.conversation_id}")
    assert (a.status_code, b.status_code) == (READ_A[role], READ_B[role])
    listing = client.get("/api/conversations?limit=200")
    if role is None:
        assert listing.status_code == 401
        return
    stores = {item["store_id"] for item in listing.get_json()["items"]}
    visible = {"owner": {world.store_a}, "agent": {world.store_a}, "stranger": set(),
               "operator": {world.store_a, world.store_b}}[role]
    assert stores & {world.store_a, world.store_b} == visible
    dead = {job["id"] for job in client.get("/api/dead-letters?limit=500").get_json()}
    expected_dead = {"owner": {world.dead_a}, "agent": {world.dead_a}, "stranger": set(),
                     "operator": {world.dead_a, world.dead_b}}[role]
    assert dead & {world.dead_a, world.dead_b} == expected_dead
    stores_api = {s["id"] for s in client.get("/api/stores").get_json()}
    assert stores_api & {world.store_a, world.store_b} == visible
    metrics = client.get("/api/metrics/queue?hours=24")
    assert metrics.status_code == (200 if role == "operator" else 403)


@pytest.mark.parametrize("role", ["owner", "agent", "stranger", None])
def test_nobody_but_store_people_acts_on_store_b(world: World, role: str | None) -> None:
    client = world.client(role)
    expected = 401 if role is None else 403
    held = world.held_b
    assert client.post(f"/api/replies/{held.reply_id}/send", json={}).status_code == expected
    assert client.post(f"/api/replies/{held.reply_id}/discard", json={}).status_code == expected
    assert client.post(f"/api/conversations/{held.conversation_id}/reply",
                       json={"body": "hi"}).status_code == expected
    assert client.post(f"/api/dead-letters/{world.dead_b}/requeue").status_code == expected
    status = world.sql.execute(
        "select status from public.replies where id = %s", (held.reply_id,)
    ).fetchone()
    assert status == {"status": "held"}


def test_dead_letter_rights(world: World) -> None:
    agent, owner, operator = (world.client(r) for r in ("agent", "owner", "operator"))
    assert agent.post(f"/api/dead-letters/{world.dead_a}/requeue").status_code == 403
    assert agent.post("/api/dead-letters/purge",
                      json={"job_ids": [world.dead_a]}).status_code == 403
    assert owner.post("/api/dead-letters/purge",
                      json={"job_ids": [world.dead_a]}).status_code == 403
    assert owner.post(f"/api/dead-letters/{world.dead_a}/requeue").status_code == 200
    assert owner.post(f"/api/dead-letters/{world.dead_a}/requeue").status_code == 409
    purged = operator.post("/api/dead-letters/purge", json={"job_ids": [world.dead_b]})
    assert purged.status_code == 200 and purged.get_json() == {"purged": 1}


def test_unknown_ids_are_404(world: World) -> None:
    client = world.client("operator")
    unknown = str(uuid.uuid4())
    assert client.get(f"/api/conversations/{unknown}").status_code == 404
    assert client.post(f"/api/replies/{unknown}/send", json={}).status_code == 404
    assert client.post(f"/api/dead-letters/{unknown}/requeue").status_code == 404
    assert client.get("/api/conversations/not-an-id").status_code == 404
    assert client.get("/api/conversations?store=not-an-id").status_code == 400


def test_search_and_filters(world: World) -> None:
    client = world.client("owner")
    by_order = client.get("/api/conversations?q=%231001").get_json()["items"]
    assert world.held_a.conversation_id in {c["id"] for c in by_order}
    by_address = client.get("/api/conversations?q=bia@customer").get_json()["items"]
    assert [c["id"] for c in by_address] == [world.held_a2.conversation_id]
    waiting = client.get(f"/api/conversations?store={world.store_a}&status=waiting").get_json()
    assert all(c["status"] == "waiting" for c in waiting["items"])
    queue = client.get("/api/needs-person").get_json()
    assert {i["store_id"] for i in queue["items"]} <= {world.store_a}


# -- sending: the exactly-once path ------------------------------------------------------------


def test_concurrent_approvals_send_the_held_reply_exactly_once(
    pipeline: Pipeline, auth_server: AuthServer, database_url: str
) -> None:
    # A draft_only store: the real pipeline drafts the reply (Claude faked) and holds it.
    pipeline.update_store(reply_mode="draft_only")
    raw = make_email("ana.souza@example.com.br", "Onde está meu pedido #1001?",
                     "Olá, meu pedido #1001 ainda não chegou.")
    job_id = pipeline.one(raw)
    pipeline.run()
    reply = pipeline.reply(job_id)
    assert reply is not None and reply["status"] == "held"
    credits_before = pipeline.credits()
    assert credits_before == 10  # a held draft is not charged

    auth = AuthClient(auth_server.url, anon_key(TEST_JWT_SECRET))
    people = create_people(auth, uuid.uuid4().hex[:8])
    pipeline.sql.execute("update public.stores set owner_id = %s where id = %s",
                         (people["owner"].user_id, pipeline.store_id))
    app, services = console_app(console_settings(database_url, auth_server.url))
    tokens = auth.sign_in(people["owner"].email, PASSWORD)
    edited = "Olá Ana! Seu pedido #1001 chega amanhã. Equipe Loja Demo"

    statuses: list[int] = []
    barrier = threading.Barrier(6)

    def approve() -> None:
        client = bearer_client(app, tokens)
        barrier.wait()
        statuses.append(
            client.post(f"/api/replies/{reply['id']}/send", json={"body": edited}).status_code
        )

    threads = [threading.Thread(target=approve) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [202, 409, 409, 409, 409, 409]
    send_jobs = pipeline.sql.execute(
        "select * from public.job_queue where job_type = 'send_reply'"
        " and payload ->> 'reply_id' = %s", (str(reply["id"]),)
    ).fetchall()
    assert len(send_jobs) == 1

    # The worker's send_reply handler sends it through the pipeline's delivery path.
    first = run_send_job(pipeline, str(send_jobs[0]["id"]))
    assert first["outcomes"] == {"replied": 1}, first
    # A retry of the same job (or a second run) finds it sent and sends nothing.
    pipeline.sql.execute("update public.job_queue set status = 'pending', locked_by = null"
                         " where id = %s", (send_jobs[0]["id"],))
    again = run_send_job(pipeline, str(send_jobs[0]["id"]))
    assert again["outcomes"] == {"replied": 1}, again

    delivered = pipeline.sent_to("ana.souza@example.com.br")
    assert len(delivered) == 1
    message = delivered[0].message()
    assert message.get_content().strip().startswith("Olá Ana! Seu pedido #1001 chega amanhã.")
    assert message["Message-ID"] == reply["smtp_message_id"]
    assert message["In-Reply-To"] == reply["in_reply_to"]
    row = pipeline.sql.execute("select status, author_id::text from public.replies where id = %s",
                               (reply["id"],)).fetchone()
    assert row == {"status": "sent", "author_id": people["owner"].user_id}
    assert pipeline.credits() == credits_before - 1  # one credit, taken when it was sent
    charges = pipeline.sql.execute(
        "select l.reason from public.credit_ledger l join public.replies r on r.job_id = l.job_id"
        " where r.id = %s", (reply["id"],)).fetchall()
    assert [c["reason"] for c in charges] == ["reply"]  # exactly one charge for the send
    view = bearer_client(app, tokens).get(
        f"/api/conversations/{reply['conversation_id']}").get_json()
    assert view["conversation"]["status"] == "answered_human"
    assert "console.reply_approved" in {e["type"] for e in view["events"]}
    services.close()
    auth.close()


# -- both backends -------------------------------------------------------------------------------


def test_the_rest_backend_runs_as_the_person_too(world: World, gateway: GatewayHandle) -> None:
    # supabase-py (PostgREST RPC with the person's token) sees and may do exactly what the
    # psycopg backend (role and claims set in the transaction) sees and may do.
    rest = Database(RestTransport(gateway.base_url, gateway.service_role_jwt,
                                  anon_key=anon_key(TEST_JWT_SECRET)))
    held = seed_held(world.sql, world.store_a, subject="Via REST", customer="rest@customer.test")
    try:
        for role in ("owner", "agent", "stranger", "operator"):
            token = world.tokens(role).access_token
            claims = verify_access_token(token, TEST_JWT_SECRET).claims
            via_pg = world.services.db.as_person(token, claims)
            via_rest = rest.as_person(token, claims)
            pg_ids = [c["id"] for c in via_pg.console_conversations(limit=200)["items"]]
            rest_ids = [c["id"] for c in via_rest.console_conversations(limit=200)["items"]]
            assert pg_ids == rest_ids, role
            assert via_pg.console_me() == via_rest.console_me()
        stranger = world.tokens("stranger").access_token
        as_stranger = rest.as_person(
            stranger, verify_access_token(stranger, TEST_JWT_SECRET).claims)
        with pytest.raises(DatabaseConstraintError) as refused:
            as_stranger.console_send_reply(held.reply_id)
        assert refused.value.code == "42501"
        owner = world.tokens("owner").access_token
        as_owner = rest.as_person(owner, verify_access_token(owner, TEST_JWT_SECRET).claims)
        assert as_owner.console_send_reply(held.reply_id, "Sent through PostgREST")["status"] \
            == "drafted"
        with pytest.raises(DatabaseConstraintError) as again:
            as_owner.console_send_reply(held.reply_id)
        assert again.value.code == "PT409"
    finally:
        rest.close()


def test_a_person_database_refuses_any_role_but_authenticated(world: World) -> None:
    # Claims that would make a call run as the service role never reach the database.
    claims = dict(verify_access_token(world.tokens("owner").access_token, TEST_JWT_SECRET).claims)
    claims["role"] = "service_role"
    with pytest.raises(DatabaseConstraintError) as refused:
        world.services.db.as_person("unused", claims).console_stores()
    assert refused.value.code == "42501"


def test_a_refused_approved_reply_is_refunded_and_can_be_rewritten(
    pipeline: Pipeline, auth_server: AuthServer, database_url: str
) -> None:
    pipeline.update_store(reply_mode="draft_only")
    customer = "bruna.refused@example.com.br"
    job_id = pipeline.one(make_email(customer, "Meu pedido", "Onde está meu pedido?"))
    pipeline.run()
    reply = pipeline.reply(job_id)
    assert reply is not None and reply["status"] == "held"
    credits_held = pipeline.credits()
    assert credits_held == 10  # a held draft is not charged

    auth = AuthClient(auth_server.url, anon_key(TEST_JWT_SECRET))
    people = create_people(auth, uuid.uuid4().hex[:8])
    auth.close()
    pipeline.sql.execute("update public.stores set owner_id = %s where id = %s",
                         (people["owner"].user_id, pipeline.store_id))
    app, services = console_app(console_settings(database_url, auth_server.url))
    try:
        tokens = AuthClient(auth_server.url, anon_key(TEST_JWT_SECRET)).sign_in(
            people["owner"].email, PASSWORD)
        client = bearer_client(app, tokens)
        assert client.post(f"/api/replies/{reply['id']}/send", json={}).status_code == 202
        send_job = pipeline.sql.execute(
            "select id::text from public.job_queue where job_type = 'send_reply'"
            " and payload ->> 'reply_id' = %s", (str(reply["id"]),)).fetchone()
        assert send_job is not None

        pipeline.sink.refuse(customer, 550)
        ran = run_send_job(pipeline, send_job["id"])
        assert ran["outcomes"] == {"failed_permanent": 1}, ran
        assert pipeline.job(send_job["id"])["status"] == "dead_letter"
        assert pipeline.credits() == credits_held  # the send's charge, refunded once
        view = client.get(f"/api/conversations/{reply['conversation_id']}").get_json()
        assert view["conversation"]["status"] == "failed"
        assert view["thread"][-1]["status"] == "failed"

        # The person writes a new reply: it never went out, so it is drafted again and charged.
        pipeline.sink.reset()
        written = client.post(f"/api/conversations/{reply['conversation_id']}/reply",
                              json={"body": "Olá Bruna, seu pedido sai hoje."})
        assert written.status_code == 202, written.data
        assert pipeline.credits() == credits_held - 1
        ran = run_send_job(pipeline, written.get_json()["job_id"])
        assert ran["outcomes"] == {"replied": 1}, ran
        (delivered,) = pipeline.sent_to(customer)
        assert delivered.message().get_content().strip() == "Olá Bruna, seu pedido sai hoje."
        assert delivered.message()["In-Reply-To"] == reply["in_reply_to"]
    finally:
        services.close()


def test_owners_change_their_stores_voice_and_nobody_else(world: World) -> None:
    url = f"/api/stores/{world.store_a}/settings"
    owner, agent = world.client("owner"), world.client("agent")
    assert agent.post(url, json={"reply_tone": "casual"}).status_code == 403
    assert world.client("stranger").post(url, json={"reply_tone": "casual"}).status_code == 403
    assert owner.post(url, json={"credits": 1000}).status_code == 400
    assert owner.post(url, json={"reply_mode": "sometimes"}).status_code == 400
    changed = owner.post(url, json={"reply_mode": "draft_only", "reply_tone": "formal",
                                    "reply_signature": "Equipe A"})
    assert changed.status_code == 200, changed.data
    assert changed.get_json()["reply_mode"] == "draft_only"
    row = world.sql.execute(
        "select reply_mode, reply_tone, reply_signature from public.stores where id = %s",
        (world.store_a,)).fetchone()
    assert row == {"reply_mode": "draft_only", "reply_tone": "formal",
                   "reply_signature": "Equipe A"}
    page = owner.get("/console/stores")
    assert page.status_code == 200 and b"Equipe A" in page.data
    agent_page = agent.get("/console/stores")
    assert b"the store's owners change these" in agent_page.data


def test_owners_set_who_is_notified_and_the_webhook_is_never_shown_back(world: World) -> None:
    url = f"/api/stores/{world.store_a}/notifications"
    owner, agent = world.client("owner"), world.client("agent")
    hook = "https://hooks.slack.example/services/T9/B9/console-Secret-4242"
    # Everyone of the store reads them; the held replies seeded for store A are listed.
    seen = agent.get(url)
    assert seen.status_code == 200
    # By default the store's people, owners first.
    assert seen.get_json()["settings"]["recipients"] == [
        world.people["owner"].email.lower(), world.people["agent"].email.lower()]
    assert {i["kind"] for i in seen.get_json()["items"]} >= {"held_reply"}
    assert all(i["store_id"] == world.store_a for i in seen.get_json()["items"])
    assert world.client("stranger").get(url).status_code == 403
    # Only owners change them, through the form's strings.
    assert agent.post(url, data={"digest_interval_minutes": "5"}).status_code == 403
    assert owner.post(url, data={"colour": "red"}).status_code == 400
    bad = owner.post(url, data={"digest_interval_minutes": "0", "addresses": "nobody"})
    assert bad.status_code == 400 and "1 to 1440" in bad.get_json()["message"]
    changed = owner.post(url, data={"addresses": "ops@a.test,\nboss@a.test",
                                    "digest_interval_minutes": "30", "webhook_url": hook})
    assert changed.status_code == 200, changed.data
    view = changed.get_json()
    assert view["recipients"] == ["boss@a.test", "ops@a.test"]
    assert view["webhook"] is True and hook not in changed.get_data(as_text=True)
    page = owner.get("/console/stores")
    assert page.status_code == 200 and b"boss@a.test" in page.data
    assert hook.encode() not in page.data and b"hooks.slack.example" in page.data
    assert b"Save notifications" not in agent.get("/console/stores").data
    # A blank URL keeps the webhook; remove_webhook removes it; empty addresses: the default.
    kept = owner.post(url, data={"webhook_url": "", "digest_wait_seconds": "5"})
    assert kept.status_code == 200 and kept.get_json()["webhook"] is True
    removed = owner.post(url, data={"remove_webhook": "true", "addresses": ""})
    assert removed.status_code == 200
    assert removed.get_json()["webhook"] is False
    assert removed.get_json()["addresses"] is None
