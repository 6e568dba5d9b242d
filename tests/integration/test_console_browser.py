"""The console in a real browser: Debian's Chromium, headless, driven by Playwright.

A store owner signs in, opens the needs-a-person queue, edits the held draft and sends it; the
worker's send_reply job delivers it to the SMTP sink and the thread shows it answered by a
person. An operator requeues a dead letter from its page and looks at the health page. An owner
sees an email waiting for credits and a customer over the reply cap, and is told to add credits
when sending at zero. Every page is saved as a screenshot under the test's temporary folder
(phone and laptop sizes).
"""

# The pipeline harness's fixtures are imported by name, which ruff reads as redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright import sync_api
from werkzeug.serving import make_server

from tests.integration.console_harness import (
    PASSWORD,
    console_app,
    console_settings,
    create_people,
    run_send_job,
    seed_dead_letter,
)
from tests.integration.test_process_pipeline import (
    Pipeline,
    make_email,
    pipeline,  # noqa: F401  (a fixture)
    pipeline_dsn,  # noqa: F401  (a fixture)
    sql,  # noqa: F401  (a fixture)
)
from tests.support.auth import TEST_JWT_SECRET, anon_key
from worker.console.auth_client import AuthClient
from worker.devstack.auth import AuthServer

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 15_000



@pytest.fixture
def console_url(database_url: str, auth_server: AuthServer) -> Iterator[str]:
    """The worker's app with the console, served over real HTTP on loopback."""
    app, services = console_app(console_settings(database_url, auth_server.url))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        services.close()


def _send_job(p: Pipeline, reply_id: str) -> str:
    row = p.sql.execute(
        "select id::text from public.job_queue where job_type = 'send_reply'"
        " and payload ->> 'reply_id' = %s", (reply_id,)
    ).fetchone()
    assert row is not None, "the console enqueued no send_reply job"
    return str(row["id"])


def test_a_person_approves_an_edited_draft_and_an_operator_requeues(
    pipeline: Pipeline, auth_server: AuthServer, console_url: str, tmp_path: Path
) -> None:
    assert shutil.which(CHROMIUM), f"no {CHROMIUM}: scripts/local-db.d/packages.sh installs it"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    # A draft_only store: the pipeline holds its reply for a person.
    pipeline.update_store(reply_mode="draft_only")
    job_id = pipeline.one(make_email("ana.souza@example.com.br", "Onde está meu pedido #1001?",
                                     "Olá, meu pedido #1001 ainda não chegou. Ana"))
    pipeline.run()
    reply = pipeline.reply(job_id)
    assert reply is not None and reply["status"] == "held"
    auth = AuthClient(auth_server.url, anon_key(TEST_JWT_SECRET))
    people = create_people(auth, uuid.uuid4().hex[:8])
    auth.close()
    pipeline.sql.execute("update public.stores set owner_id = %s where id = %s",
                         (people["owner"].user_id, pipeline.store_id))
    dead = seed_dead_letter(pipeline.sql, pipeline.store_id)
    window = f"console_browser_{uuid.uuid4().hex[:8]}"
    pipeline.sql.execute(
        "insert into public.queue_metrics (job_type, window_start, window_end, pending_count,"
        " completed_in_window, retried_in_window, dead_lettered_in_window, p95_processing_ms)"
        " select %s, w, w + interval '5 minutes', (random() * 20)::int, (random() * 40)::int,"
        " (random() * 4)::int, (random() * 1.3)::int, 800 + random() * 900"
        " from generate_series(now() - interval '23 hours', now(), interval '30 minutes') w",
        (window,),
    )
    edited = "Olá Ana! Seu pedido #1001 sai para entrega amanhã. Equipe Loja Demo"

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            owner = browser.new_context(viewport=LAPTOP)
            page = owner.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{console_url}/console")
            assert "/login" in page.url  # signed out: the sign-in form
            page.screenshot(path=str(shots / "01-login.png"), full_page=True)
            page.fill("input[name=email]", people["owner"].email)
            page.fill("input[name=password]", PASSWORD)
            with page.expect_navigation():
                page.click("button[type=submit]")
            assert page.url.endswith("/console")
            page.get_by_text("Onde está meu pedido #1001?").wait_for()
            page.screenshot(path=str(shots / "02-needs-a-person.png"), full_page=True)

            with page.expect_navigation():
                page.get_by_text("Onde está meu pedido #1001?").click()
            page.get_by_role("heading", name="Held reply: edit and send").wait_for()
            page.screenshot(path=str(shots / "03-conversation-held.png"), full_page=True)
            page.fill("textarea[name=body]", edited)
            with page.expect_navigation():
                page.get_by_role("button", name="Send this reply").click()
            assert page.get_by_role("heading", name="Held reply: edit and send").count() == 0

            ran = run_send_job(pipeline, _send_job(pipeline, str(reply["id"])))
            assert ran["outcomes"] == {"replied": 1}, ran
            page.reload()
            sent = page.locator("article.reply.r-sent")
            sent.wait_for()
            assert edited in sent.inner_text()
            assert "answered by a person" in page.locator("p.meta .status").inner_text()
            page.screenshot(path=str(shots / "04-conversation-answered.png"), full_page=True)

            page.goto(f"{console_url}/console/conversations?q=%231001")
            page.locator("ol.list .status", has_text="answered by a person").first.wait_for()
            page.screenshot(path=str(shots / "05-conversations.png"), full_page=True)

            page.goto(f"{console_url}/console/stores")
            page.get_by_role("button", name="Save").first.wait_for()
            page.screenshot(path=str(shots / "09-stores.png"), full_page=True)
            # The owner sets who is told and a webhook; the URL is never shown back.
            form = page.locator("form[data-api$='/notifications']")
            form.locator("input[name=addresses]").fill("ops@loja-demo.test")
            form.locator("input[name=webhook_url]").fill(
                "https://hooks.slack.example/services/T1/B1/browser-secret-5150")
            with page.expect_navigation():
                form.get_by_role("button", name="Save notifications").click()
            page.get_by_text("webhook: hooks.slack.example …5150").wait_for()
            assert "browser-secret" not in page.content()
            assert page.locator("table.notices td", has_text="held reply").count() >= 1
            page.screenshot(path=str(shots / "10-notifications.png"), full_page=True)

            phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
            phone.add_cookies(owner.cookies())
            phone_page = phone.new_page()
            phone_page.goto(f"{console_url}/console/conversations/{reply['conversation_id']}")
            phone_page.locator("article.reply.r-sent").wait_for()
            phone_page.screenshot(path=str(shots / "06-phone-conversation.png"), full_page=True)

            operator = browser.new_context(viewport=LAPTOP)
            op = operator.new_page()
            op.set_default_timeout(TIMEOUT_MS)
            op.goto(f"{console_url}/login")
            op.fill("input[name=email]", people["operator"].email)
            op.fill("input[name=password]", PASSWORD)
            with op.expect_navigation():
                op.click("button[type=submit]")
            op.goto(f"{console_url}/console/dead-letters")
            row = op.locator("li.job", has=op.locator(f"form[data-api$='/{dead}/requeue']"))
            row.wait_for()
            op.screenshot(path=str(shots / "07-dead-letters.png"), full_page=True)
            with op.expect_navigation():
                row.get_by_role("button", name="Requeue").click()
            assert op.locator(f"form[data-api$='/{dead}/requeue']").count() == 0
            op.goto(f"{console_url}/console/health")
            op.locator("svg.chart").first.wait_for()
            op.screenshot(path=str(shots / "08-health.png"))
        finally:
            browser.close()
            pipeline.sql.execute("delete from public.queue_metrics where job_type = %s",
                                 (window,))

    status = pipeline.sql.execute("select status from public.job_queue where id = %s",
                                  (dead,)).fetchone()
    assert status == {"status": "pending"}
    delivered = pipeline.sent_to("ana.souza@example.com.br")
    assert len(delivered) == 1
    assert delivered[0].message().get_content().strip().startswith(edited)
    assert sorted(p.name for p in shots.iterdir()) == [
        "01-login.png", "02-needs-a-person.png", "03-conversation-held.png",
        "04-conversation-answered.png", "05-conversations.png", "06-phone-conversation.png",
        "07-dead-letters.png", "08-health.png", "09-stores.png", "10-notifications.png",
    ]


def test_a_held_reply_answered_from_the_mail_client_shows_who_answered(
    pipeline: Pipeline, auth_server: AuthServer, console_url: str, tmp_path: Path
) -> None:
    """Decision 0019: what a person sees once someone answered from their own mail client."""
    pipeline.update_store(reply_mode="draft_only")
    job_id = pipeline.one(make_email("ana.souza@example.com.br", "Troca de tamanho",
                                     "Olá, posso trocar a camiseta por um tamanho M? Ana"))
    pipeline.run()
    reply = pipeline.reply(job_id)
    assert reply is not None and reply["status"] == "held"
    auth = AuthClient(auth_server.url, anon_key(TEST_JWT_SECRET))
    people = create_people(auth, uuid.uuid4().hex[:8])
    auth.close()
    pipeline.sql.execute("update public.stores set owner_id = %s where id = %s",
                         (people["owner"].user_id, pipeline.store_id))
    # What the Sent scan records when Maria's answer, threaded under Ana's email, is read.
    pipeline.sql.execute(
        "select public.record_sent_scan(%s, 'Sent', 1, 1, jsonb_build_array(jsonb_build_object("
        "'uid', 1, 'message_id', %s::text, 'in_reply_to', %s::text, 'references', '[]'::jsonb,"
        "'from', 'Maria Silva <support@shop.test>')))",
        (pipeline.store_id, f"<maria-{uuid.uuid4().hex}@shop.test>", reply["in_reply_to"]),
    )
    shot = tmp_path / "10-answered-from-the-mail-client.png"

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = browser.new_context(viewport=LAPTOP).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{console_url}/login")
            page.fill("input[name=email]", people["owner"].email)
            page.fill("input[name=password]", PASSWORD)
            with page.expect_navigation():
                page.click("button[type=submit]")
            page.goto(f"{console_url}/console/conversations/{reply['conversation_id']}")
            line = page.locator("article.reply.r-superseded .answered-elsewhere")
            line.wait_for()
            assert line.inner_text() == (
                "answered by Maria Silva <support@shop.test> from their mail client"
            )
            assert "answered by a person" in page.locator("p.meta .status").inner_text()
            assert page.get_by_role("button", name="Send this reply").count() == 0
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 0
    assert pipeline.sink.messages == []


def test_waiting_for_credits_and_a_customer_over_the_cap_as_a_person_sees_them(
    pipeline: Pipeline, auth_server: AuthServer, console_url: str, tmp_path: Path
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    # One reply per customer here: Bia's second email goes to a person without a draft.
    pipeline.one(make_email("bia@example.com.br", "Pedido #1001", "Onde está o pedido #1001?"))
    assert pipeline.run(reply_cap_per_customer=1)["outcomes"] == {"replied": 1}
    over_cap = pipeline.one(make_email("bia@example.com.br", "De novo", "E o pedido #1001?"))
    assert pipeline.run(reply_cap_per_customer=1)["outcomes"] == {"held": 1}
    # The store runs out of credits; Carla's email waits for them.
    pipeline.db.admin_add_credits(pipeline.store_id, -pipeline.credits(), "adjustment")
    waiting = pipeline.one(make_email("carla@example.com.br", "Troca de tamanho",
                                      "Quero saber do pedido #1003."))
    assert pipeline.run()["outcomes"] == {"waiting_for_credits": 1}
    held = pipeline.reply(over_cap)
    assert held is not None and held["hold_reason"] == "reply_cap"
    conversation = pipeline.job(waiting)["conversation_id"]
    auth = AuthClient(auth_server.url, anon_key(TEST_JWT_SECRET))
    people = create_people(auth, uuid.uuid4().hex[:8])
    auth.close()
    pipeline.sql.execute("update public.stores set owner_id = %s where id = %s",
                         (people["owner"].user_id, pipeline.store_id))

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = browser.new_context(viewport=LAPTOP).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{console_url}/login")
            page.fill("input[name=email]", people["owner"].email)
            page.fill("input[name=password]", PASSWORD)
            with page.expect_navigation():
                page.click("button[type=submit]")
            reason = page.locator(".reason", has_text="over the reply cap")
            reason.wait_for()
            page.screenshot(path=str(shots / "10-needs-a-person-over-cap.png"), full_page=True)

            page.goto(f"{console_url}/console/conversations?status=waiting_credits")
            page.locator("ol.list .status", has_text="waiting for credits").first.wait_for()
            assert "Troca de tamanho" in page.locator("ol.list").inner_text()
            page.screenshot(path=str(shots / "11-conversations-waiting-for-credits.png"),
                            full_page=True)
            page.goto(f"{console_url}/console/conversations/{conversation}")
            notice = page.locator("p.notice")
            notice.wait_for()
            assert "answered automatically as soon as credits are added" in notice.inner_text()
            page.screenshot(path=str(shots / "12-conversation-waiting-for-credits.png"),
                            full_page=True)

            # Sending the over-cap reply at zero credits is refused with what to do.
            page.goto(f"{console_url}/console/conversations/{held['conversation_id']}")
            page.fill("textarea[name=body]", "Olá Bia, seu pedido #1001 chega amanhã.")
            page.get_by_role("button", name="Send this reply").click()
            error = page.locator("p.form-error", has_text="no credits left")
            error.wait_for()
            assert "add credits, then send this reply" in error.inner_text()
            page.screenshot(path=str(shots / "13-send-refused-without-credits.png"),
                            full_page=True)
        finally:
            browser.close()

    row = pipeline.sql.execute("select status from public.replies where id = %s",
                               (held["id"],)).fetchone()
    assert row == {"status": "held"}  # nothing was queued behind the person's back
    assert pipeline.job(waiting)["status"] == "pending"
    assert len(list(shots.iterdir())) == 4
