"""worker.promises: a reply may promise a person's follow-up only when a person is queued."""

from __future__ import annotations

import pytest

from worker import offline, promises
from worker.responder import KnowledgeEntry, OrderFacts


@pytest.mark.parametrize(
    "text",
    [
        "Our team will review it and reply soon.",
        "We'll get back to you within a day.",
        "Your message has been passed to our team, who will reply personally.",
        "Your request was forwarded to our team.",
        "Nossa equipe vai analisar e responder em breve.",
        "Sua mensagem foi encaminhada à nossa equipe.",
        "Retornaremos assim que possível.",
        "NOSSA EQUIPE IRÁ verificar.",
    ],
)
def test_promises_of_a_persons_follow_up_are_recognised(text: str) -> None:
    assert promises.promises_follow_up(text)


@pytest.mark.parametrize(
    "text",
    [
        "Your order #1001 is in transit; tracking BR123456789BR.",
        "If the delivery date has passed, please reply to this email to let us know.",
        "Please reply from the email address used for the purchase.",
        "Se precisar de mais alguma coisa, é só responder a este e-mail.",
        "The steamwill arrive tomorrow.",
    ],
)
def test_plain_answers_promise_nothing(text: str) -> None:
    assert not promises.promises_follow_up(text)


@pytest.mark.parametrize("language", ["pt-BR", "en"])
@pytest.mark.parametrize("intent", ["order_status", "shipping_delay"])
@pytest.mark.parametrize("with_orders", [True, False])
def test_automatic_order_replies_promise_no_follow_up(
    intent: str, language: str, with_orders: bool
) -> None:
    order = OrderFacts(
        name="#1001",
        email="ana@example.com",
        customer_email="ana@example.com",
        financial_status="PAID",
        fulfillment_status="UNFULFILLED",
        created_at="2025-09-28T10:00:00Z",
    )
    orders = [order] if with_orders else []
    text = offline.compose_reply(intent, orders, language, "friendly", handoff=False)
    assert not promises.promises_follow_up(text), text


@pytest.mark.parametrize("language", ["pt-BR", "en"])
@pytest.mark.parametrize("intent", ["return_refund", "cancellation", "complaint", "other"])
def test_replies_that_need_the_team_say_so_and_are_therefore_held(
    intent: str, language: str
) -> None:
    # These texts tell the customer the team will act: the pipeline holds them for a person.
    text = offline.compose_reply(intent, [], language, "friendly", handoff=False)
    assert promises.promises_follow_up(text), text


def test_with_a_person_queued_the_no_order_reply_may_say_the_team_will_check() -> None:
    text = offline.compose_reply("order_status", [], "en", "friendly", handoff=True)
    assert promises.promises_follow_up(text)
    assert "our team will check" in text


RETURNS = KnowledgeEntry(
    "returns",
    "Trocas e devoluções",
    "Você pode devolver ou trocar em até 30 dias corridos após o recebimento.",
)


def test_the_stores_own_policy_answers_a_return_without_promising_a_person() -> None:
    text = offline.compose_reply(
        "return_refund", [], "pt-BR", "friendly", knowledge=[RETURNS], handoff=False
    )
    assert "em até 30 dias corridos" in text
    assert not promises.promises_follow_up(text), text


def test_a_cancellation_still_needs_the_team_whatever_the_policy_says() -> None:
    text = offline.compose_reply(
        "cancellation", [], "pt-BR", "friendly", knowledge=[RETURNS], handoff=False
    )
    assert promises.promises_follow_up(text), text  # so the pipeline holds it for a person
