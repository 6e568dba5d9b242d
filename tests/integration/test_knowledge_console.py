"""The store's knowledge in the console: the JSON API as each kind of person, and the page in a
real browser (Debian's Chromium via Playwright), where an owner adds, edits and deletes entries
and an agent only reads them. Screenshots land under the test's temporary folder."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright import sync_api
from psycopg.rows import dict_row
from werkzeug.serving import make_server

from tests.integration.console_harness import (
    PASSWORD,
    ConsolePerson,
    bearer_client,
    console_app,
    console_settings,
    create_people,
    seed_store,
)
from tests.support.auth import TEST_JWT_SECRET, anon_key
from worker.console.auth_client import AuthClient
from worker.devstack.auth import AuthServer

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
LAPTOP = {"width": 1280, "height": 900}
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def world(database_url: str, auth_server: AuthServer) -> Iterator[dict[str, Any]]:
    """Two stores; owner and agent of A, a stranger; A has a returns policy, B its own."""
    app, services = console_app(console_settings(database_url, auth_server.url))
    auth = AuthClient(auth_server.url, anon_key(TEST_JWT_SECRET))
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as sql:
        people = create_people(auth, uuid.uuid4().hex[:8])
        store_a = seed_store(sql, people["owner"].user_id, "Loja A")
        store_b = seed_store(sql, None, "Loja B")
        services.db.add_store_member(store_a, people["agent"].email, "agent")
        services.db.save_knowledge(
            store_a, {"topic": "returns", "title": "Trocas", "body": "Trocas em até 30 dias."}
        )
        b_entry = services.db.save_knowledge(
            store_b, {"topic": "returns", "title": "Trocas B", "body": "Loja B: 7 dias."}
        )
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield {
                "app": app,
                "auth": auth,
                "sql": sql,
                "people": people,
                "store_a": store_a,
                "store_b": store_b,
                "b_entry": str(b_entry["id"]),
                "url": f"http://127.0.0.1:{server.server_port}",
            }
        finally:
            server.shutdown()
            services.close()
            auth.close()


def client_of(world: dict[str, Any], person: ConsolePerson) -> Any:
    return bearer_client(world["app"], world["auth"].sign_in(person.email, PASSWORD))


def test_the_api_lets_owners_edit_agents_read_and_strangers_see_nothing(
    world: dict[str, Any],
) -> None:
    people, store_a, store_b = world["people"], world["store_a"], world["store_b"]
    owner, agent, stranger = (client_of(world, people[r]) for r in ("owner", "agent", "stranger"))

    listed = agent.get(f"/api/stores/{store_a}/knowledge")
    assert listed.status_code == 200
    assert [e["title"] for e in listed.get_json()["entries"]] == ["Trocas"]
    assert listed.get_json()["store"]["role"] == "agent"
    refused = agent.post(
        f"/api/stores/{store_a}/knowledge",
        json={"topic": "faq", "title": "By the agent", "body": "x"},
    )
    assert refused.status_code == 403

    assert stranger.get(f"/api/stores/{store_a}/knowledge").status_code == 404
    assert owner.get(f"/api/stores/{store_b}/knowledge").status_code == 404
    assert (
        owner.post(
            f"/api/stores/{store_b}/knowledge", json={"topic": "faq", "title": "x", "body": "y"}
        ).status_code
        == 403
    )
    assert owner.post(f"/api/knowledge/{world['b_entry']}/delete").status_code == 403

    made = owner.post(
        f"/api/stores/{store_a}/knowledge",
        json={"topic": "payment", "title": "Pagamento", "body": "Pix e cartão."},
    )
    assert made.status_code == 200
    entry_id = made.get_json()["id"]
    changed = owner.post(
        f"/api/stores/{store_a}/knowledge",
        json={"id": entry_id, "topic": "payment", "title": "Pagamento", "body": "Só Pix."},
    )
    assert changed.status_code == 200 and changed.get_json()["body"] == "Só Pix."
    clash = owner.post(
        f"/api/stores/{store_a}/knowledge",
        json={"id": entry_id, "topic": "payment", "title": "Trocas", "body": "Só Pix."},
    )
    assert clash.status_code == 409 and "already titled" in clash.get_json()["message"]
    bad = owner.post(
        f"/api/stores/{store_a}/knowledge", json={"topic": "weather", "title": "x", "body": "y"}
    )
    assert bad.status_code == 400 and "topic must be one of" in bad.get_json()["message"]
    missing = owner.post(f"/api/stores/{store_a}/knowledge", json={"topic": "faq", "title": "x"})
    assert missing.status_code == 400
    assert owner.post(f"/api/knowledge/{entry_id}/delete").get_json() == {"deleted": True}
    assert owner.post(f"/api/knowledge/{entry_id}/delete").status_code == 404

    b_body = (
        world["sql"]
        .execute("select body from public.store_knowledge where id = %s", (world["b_entry"],))
        .fetchone()
    )
    assert b_body == {"body": "Loja B: 7 dias."}


def _sign_in(page: sync_api.Page, url: str, email: str) -> None:
    page.goto(f"{url}/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit]")


def test_an_owner_fills_the_knowledge_base_in_the_browser(
    world: dict[str, Any], tmp_path: Path
) -> None:
    assert shutil.which(CHROMIUM), f"no {CHROMIUM}: scripts/local-db.d/packages.sh installs it"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    url, store_a, people = world["url"], world["store_a"], world["people"]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = browser.new_context(viewport=LAPTOP).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.on("dialog", lambda dialog: dialog.accept())
            _sign_in(page, url, people["owner"].email)
            page.goto(f"{url}/console/stores")
            with page.expect_navigation():
                page.get_by_role("link", name="Knowledge").first.click()
            assert page.url.endswith(f"/console/stores/{store_a}/knowledge")

            add = page.locator("#add-entry form")
            add.locator("select[name=topic]").select_option("shipping")
            add.locator("input[name=title]").fill("Prazos de entrega")
            add.locator("textarea[name=body]").fill("Enviamos em até 2 dias úteis.")
            with page.expect_navigation():
                add.get_by_role("button", name="Add").click()
            shipping = page.locator("#topic-shipping article.knowledge-entry")
            shipping.wait_for()
            assert shipping.locator("input[name=title]").input_value() == "Prazos de entrega"

            shipping.locator("textarea[name=body]").fill("Enviamos em até 1 dia útil.")
            with page.expect_navigation():
                shipping.get_by_role("button", name="Save").click()
            page.screenshot(path=str(shots / "knowledge-owner.png"), full_page=True)

            returns = page.locator("#topic-returns article.knowledge-entry")
            with page.expect_navigation():
                returns.get_by_role("button", name="Delete").click()
            assert page.locator("#topic-returns .empty").is_visible()

            agent_page = browser.new_context(viewport=LAPTOP).new_page()
            agent_page.set_default_timeout(TIMEOUT_MS)
            _sign_in(agent_page, url, people["agent"].email)
            agent_page.goto(f"{url}/console/stores/{store_a}/knowledge")
            agent_page.locator("#topic-shipping pre.body").wait_for()
            assert "1 dia útil" in agent_page.locator("#topic-shipping pre.body").inner_text()
            assert agent_page.locator("form").count() == 1  # only the sign-out form
            agent_page.screenshot(path=str(shots / "knowledge-agent.png"), full_page=True)
        finally:
            browser.close()

    rows = (
        world["sql"]
        .execute(
            "select topic, title, body from public.store_knowledge where store_id = %s",
            (store_a,),
        )
        .fetchall()
    )
    assert rows == [
        {"topic": "shipping", "title": "Prazos de entrega", "body": "Enviamos em até 1 dia útil."}
    ]
    assert sorted(p.name for p in shots.iterdir()) == ["knowledge-agent.png", "knowledge-owner.png"]
