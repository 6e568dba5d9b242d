"""Products and fuller order facts through the whole pipeline (issue 15 items 3 and 4).

Same harness as test_process_pipeline.py: real Postgres, Dovecot and SMTP sink; Claude and
Shopify faked at the HTTP layer, so the real SDK, the real ShopifyClient and the prompt building
run. What reaches the model is read from the request the fake Claude received.
"""

# The harness's fixtures are imported by name, which ruff reads as redefinitions (F811).
# ruff: noqa: F811

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_process_pipeline import (
    ANA,
    JOHN,
    Pipeline,
    make_email,
    pipeline,  # noqa: F401  (a fixture)
    pipeline_dsn,  # noqa: F401  (a fixture)
    sql,  # noqa: F401  (a fixture)
)
from worker import prompts
from worker.devstack.fake_claude import data_blocks

pytestmark = pytest.mark.integration

EMMA = "emma.jones@example.co.uk"  # order #1004 in the demo catalogue
LUCIA = "lucia.garcia@example.es"  # order #1005: cancelled and refunded
SCARF_URL = "https://lojaexemplo.com.br/products/wool-scarf"
# Products a search for the scarf finds in the fake shop that no reply may mention: a draft, an
# archived one, and an active one not published to the online store.
HIDDEN = ("Limited Edition", "wool-scarf-limited", "Classic", "Sample", "R$ 199,00", "R$ 99,00")


def reply_contexts(pipeline: Pipeline) -> list[dict[str, Any]]:
    """The reply-context data block of every request the model received."""
    blocks = [data_blocks(r.user_text) for r in pipeline.claude.messages]
    return [b[prompts.CONTEXT_BLOCK] for b in blocks if prompts.CONTEXT_BLOCK in b]


def model_text(pipeline: Pipeline) -> str:
    return "\n".join(r.user_text for r in pipeline.claude.messages)


def product_searches(pipeline: Pipeline) -> list[str]:
    return [
        str((q.body or {}).get("variables", {}).get("query"))
        for q in pipeline.shopify.queries
        if "products(" in str((q.body or {}).get("query"))
    ]


def test_a_product_question_is_answered_with_price_availability_and_link(
    pipeline: Pipeline,
) -> None:
    job_id = pipeline.one(
        make_email(
            f"Emma Jones <{EMMA}>",
            "Is the wool scarf available in navy?",
            "Hello,\n\nI love the grey wool scarf I bought from you. Do you have the same scarf "
            "in navy, and is it in stock at the moment?\n\nKind regards,\nEmma Jones\n",
        )
    )

    assert pipeline.run()["outcomes"] == {"replied": 1}

    [search] = product_searches(pipeline)
    assert search.startswith("status:active AND (") and "scarf*" in search
    [context] = reply_contexts(pipeline)
    [scarf] = context["products"]
    assert scarf["title"] == "Wool Scarf" and scarf["url"] == SCARF_URL
    assert scarf["price"] == "R$ 129,00" and scarf["available"] is True
    assert {v["title"]: v["available"] for v in scarf["variants"]} == {
        "Grey": True,
        "Navy": True,
        "Burgundy": False,
    }
    # No stock counts (the fake keeps them; the client never asks), nothing unpublished.
    assert "inventory" not in model_text(pipeline).lower()
    for hidden in HIDDEN:
        assert hidden not in model_text(pipeline), hidden

    # The shop's own pages and prices pass the reply guard though the shop has a domain of its
    # own: the reply is sent, not held as an unexpected link or amount.
    [sent] = pipeline.sent_to(EMMA)
    body = sent.message().get_content()
    assert "Wool Scarf - R$ 129,00 - available" in body
    assert "Navy (available)" in body and "Burgundy (sold out)" in body
    assert SCARF_URL in body
    reply = pipeline.reply(job_id)
    assert reply is not None and reply["status"] == "sent" and reply["hold_reason"] is None
    [lookup] = [e for e in pipeline.events(job_id) if e["event_type"] == "process.product_lookup"]
    assert lookup["detail"]["found"] == 1 and lookup["detail"]["products"] == ["Wool Scarf"]


def test_products_named_in_quotes_that_are_not_public_never_reach_the_model(
    pipeline: Pipeline,
) -> None:
    pipeline.one(
        make_email(
            JOHN,
            "Scarves",
            'Do you have the "Wool Scarf Sample" or the "Wool Scarf Limited Edition" in stock?',
        )
    )

    assert pipeline.run()["outcomes"] == {"replied": 1}

    [context] = reply_contexts(pipeline)
    assert [p["title"] for p in context["products"]] == ["Wool Scarf"]
    for hidden in HIDDEN:
        assert hidden not in str(context), hidden


def test_an_email_that_does_not_ask_about_products_costs_no_catalogue_call(
    pipeline: Pipeline,
) -> None:
    pipeline.one(make_email(JOHN, "Order #1002", "Hi, where is my order #1002? Thanks, John"))

    assert pipeline.run()["outcomes"] == {"replied": 1}

    assert product_searches(pipeline) == []
    [context] = reply_contexts(pipeline)
    assert "products" not in context  # an empty part never reaches the prompt


def test_a_failing_catalogue_search_is_retried_and_counts_against_the_shops_breaker(
    pipeline: Pipeline,
) -> None:
    pipeline.shopify.reply_status(503)
    job_id = pipeline.one(make_email(EMMA, "Wool scarf price?", "How much is the wool scarf?"))

    assert pipeline.run()["outcomes"] == {"failed_transient": 1}

    job = pipeline.job(job_id)
    assert job["status"] == "pending" and "HTTP 503" in job["last_error"]
    assert pipeline.ledger(job_id) == [] and pipeline.sink.messages == []
    breaker = pipeline.sql.execute(
        "select consecutive_failures from public.circuit_breakers where service = %s",
        (f"shopify:{pipeline.store_id}",),
    ).fetchone()
    assert breaker is not None and breaker["consecutive_failures"] == 1

    pipeline.make_due(job_id)
    assert pipeline.run()["outcomes"] == {"replied": 1}
    assert SCARF_URL in pipeline.sent_to(EMMA)[0].message().get_content()


def test_an_open_shop_breaker_defers_the_product_question_without_a_call_or_an_attempt(
    pipeline: Pipeline,
) -> None:
    service = f"shopify:{pipeline.store_id}"
    pipeline.sql.execute(
        "insert into public.circuit_breakers (service, state, opened_at, open_until, open_count)"
        " values (%s, 'open', now(), now() + interval '10 minutes', 1)",
        (service,),
    )
    try:
        job_id = pipeline.one(make_email(EMMA, "Wool scarf price?", "How much is the wool scarf?"))

        assert pipeline.run()["outcomes"] == {"deferred": 1}

        job = pipeline.job(job_id)
        assert job["status"] == "pending" and job["attempt_count"] == 0
        assert pipeline.shopify.queries == [] and pipeline.ledger(job_id) == []
    finally:
        pipeline.reset_breaker(service)

    pipeline.make_due(job_id)
    assert pipeline.run()["outcomes"] == {"replied": 1}
    assert SCARF_URL in pipeline.sent_to(EMMA)[0].message().get_content()


def test_a_token_without_read_products_dead_letters_the_product_question_with_the_reason(
    pipeline: Pipeline,
) -> None:
    pipeline.shopify.scopes = {"read_customers", "read_orders"}
    try:
        product = pipeline.one(make_email(EMMA, "Scarf", "Is the wool scarf in stock?"))
        order = pipeline.one(make_email(JOHN, "Order #1002", "Where is my order #1002?"))

        outcomes = pipeline.run()["outcomes"]
    finally:
        pipeline.shopify.scopes = {"read_customers", "read_orders", "read_products"}

    assert outcomes == {"failed_permanent": 1, "replied": 1}
    job = pipeline.job(product)
    assert job["status"] == "dead_letter" and job["last_error_type"] == "permanent"
    assert "read_products" in job["last_error"]
    assert pipeline.ledger(product) == []  # looked up before the credit is reserved
    assert pipeline.job(order)["status"] == "completed"  # orders still work


# -- fuller order facts, and only the sender's ---------------------------------------------------


def test_an_order_answer_carries_the_shipments_latest_events(pipeline: Pipeline) -> None:
    pipeline.one(
        make_email(f"Ana Souza <{ANA}>", "Onde está meu pedido #1001?", "Quando chega? Obrigada")
    )

    assert pipeline.run()["outcomes"] == {"replied": 1}

    [context] = reply_contexts(pipeline)
    [order] = context["orders"]
    events = order["shipments"][0]["events"]
    assert [e["status"] for e in events] == ["IN_TRANSIT", "CONFIRMED", "LABEL_PRINTED"]
    assert events[0]["message"] == "Objeto em trânsito - de Cajamar/SP para Curitiba/PR"
    assert order["shipments"][0]["estimated_delivery_at"] == "2025-10-06T23:59:00Z"
    body = pipeline.sent_to(ANA)[0].message().get_content()
    assert (
        "Última atualização (01/10/2025): Objeto em trânsito - de Cajamar/SP para Curitiba/PR"
        in body
    )
    assert "Previsão de entrega: 06/10/2025" in body


def test_a_cancelled_and_refunded_order_is_told_to_its_customer_only(pipeline: Pipeline) -> None:
    own = pipeline.one(
        make_email(
            f"Lucía García <{LUCIA}>", "Mi pedido #1005", "Hola, ¿dónde está mi pedido #1005?"
        )
    )
    foreign = pipeline.one(
        make_email(JOHN, "Order #1005", "Hi, where is my order #1005? Please send the tracking.")
    )

    assert pipeline.run()["outcomes"] == {"replied": 2}

    lucia = pipeline.sent_to(LUCIA)[0].message().get_content()
    assert "Pedido cancelado el 26/09/2025" in lucia
    assert "Reembolso de R$ 45,00 el 26/09/2025" in lucia
    reply = pipeline.reply(own)
    assert reply is not None and reply["language"] == "es"

    john = pipeline.reply(foreign)
    assert john is not None
    for leaked in ("#1005", "45.00", "45,00", "caneca", "lucia", "cancelled on", "2025-09-26"):
        assert leaked not in john["body_text"].lower(), leaked
    contexts = reply_contexts(pipeline)
    johns = [c for c in contexts if all(o["order"] != "#1005" for o in c["orders"])]
    assert len(johns) == 1 and [o["order"] for o in johns[0]["orders"]] == ["#1002"]
    assert all("refunds" not in o for o in johns[0]["orders"])
