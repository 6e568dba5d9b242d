"""The offline responder: rule-based classification (pt, en) and templated, grounded replies."""

from __future__ import annotations

import pytest

from worker import offline
from worker.responder import (
    HOLD_NEEDS_HUMAN,
    Classification,
    EmailFacts,
    FulfillmentFacts,
    KnowledgeEntry,
    OrderFacts,
    ProductFacts,
    RefundFacts,
    ReplyContext,
    ShipmentEvent,
    StoreVoice,
    TrackingFacts,
    VariantFacts,
)

SAMPLES = [
    (
        "Onde está meu pedido?",
        "Olá, fiz a compra semana passada. Qual o código de rastreio?",
        "order_status",
        "pt-BR",
    ),
    (
        "Pedido atrasado",
        "Meu pedido #1043 ainda não chegou e o prazo já passou.",
        "shipping_delay",
        "pt-BR",
    ),
    (
        "Reembolso",
        "Quero a devolução do produto e o reembolso do valor, por favor.",
        "return_refund",
        "pt-BR",
    ),
    ("Cancelar compra", "Bom dia, gostaria de cancelar o pedido 2231.", "cancellation", "pt-BR"),
    (
        "Dúvida",
        "Vocês têm essa camiseta no tamanho G? Qual o material?",
        "product_question",
        "pt-BR",
    ),
    ("Absurdo", "Produto veio com defeito, péssimo atendimento.", "complaint", "pt-BR"),
    (
        "Where is my order?",
        "Hi, I placed an order last week. Can you send the tracking number?",
        "order_status",
        "en",
    ),
    (
        "Late delivery",
        "My order #1002 still hasn't arrived and it is two weeks late.",
        "shipping_delay",
        "en",
    ),
    ("Refund please", "I would like to return the mug and get a refund.", "return_refund", "en"),
    (
        "Cancel",
        "Please cancel my order number 5512, I ordered the wrong size.",
        "cancellation",
        "en",
    ),
    ("Question", "Do you have the tote bag in stock in green?", "product_question", "en"),
    ("Increase your traffic", "We offer SEO services and backlinks. Click here.", "spam", "en"),
    ("Hello", "Just wanted to say hello to the team.", "other", "en"),
]


@pytest.mark.parametrize(("subject", "body", "intent", "language"), SAMPLES)
def test_classifies_portuguese_and_english(
    subject: str, body: str, intent: str, language: str
) -> None:
    result = offline.OfflineResponder().classify(EmailFacts("c@example.com", subject, body))
    assert (result.intent, result.language) == (intent, language)
    assert result.is_spam == (intent == "spam")
    assert 0.0 <= result.confidence <= 1.0


def test_unknown_intent_has_low_confidence() -> None:
    result = offline.classify_text("Hello", "Just wanted to say hello to the team.")
    assert result.intent == "other"
    assert result.confidence < offline.CONFIDENCE_MIXED


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("Meu pedido #1043 não chegou", ["1043"]),
        ("pedido nº 2231 e também o pedido 2232", ["2231", "2232"]),
        ("order number 5512 and #5512 again", ["5512"]),
        ("Order no. 77812", ["77812"]),
        ("Call me at 11 99999-8888 tomorrow", []),
    ],
)
def test_finds_order_numbers(text: str, numbers: list[str]) -> None:
    assert offline.find_order_numbers(text) == numbers


@pytest.mark.parametrize(
    "body",
    [
        "Quero falar com um atendente humano agora.",
        "I want to speak to a manager about this.",
        "Vou abrir reclamação no Procon.",
        "I will file a chargeback with my bank.",
    ],
)
def test_requests_for_a_person_need_a_human(body: str) -> None:
    assert offline.classify_text("Help", body).needs_human


def test_sentiment() -> None:
    assert offline.classify_text("", "Péssimo, estou decepcionada").sentiment == "negative"
    assert offline.classify_text("", "Obrigada, adorei o produto!").sentiment == "positive"
    assert offline.classify_text("", "Qual o tamanho da caixa?").sentiment == "neutral"


def test_language_hint_breaks_ties() -> None:
    assert offline.detect_language("#1001", hint="pt-BR") == "pt-BR"
    assert offline.detect_language("#1001") == "en"


ORDER = OrderFacts(
    name="#1001",
    created_at="2025-09-28T14:12:00Z",
    email="ana@example.com.br",
    customer_email="ana@example.com.br",
    financial_status="PAID",
    fulfillment_status="FULFILLED",
    line_items=["2 x Camiseta"],
    fulfillments=[
        FulfillmentFacts(
            status="IN_TRANSIT",
            estimated_delivery_at="2025-10-06T23:59:00Z",
            tracking=[TrackingFacts("BR123456789BR", "https://t.example/BR1", "Correios")],
        )
    ],
)
STORE = StoreVoice("Loja Demo", signature="Equipe Loja Demo")


def classification(intent: str, language: str, needs_human: bool = False) -> Classification:
    return Classification(intent, language, "neutral", needs_human, 0.85, [])  # type: ignore[arg-type]


def test_portuguese_reply_states_the_order_facts() -> None:
    email = EmailFacts("ana@example.com.br", "Rastreio", "Cadê meu pedido #1001?")
    draft = offline.OfflineResponder().draft(
        email, classification("order_status", "pt-BR"), ReplyContext(STORE, [ORDER])
    )
    assert draft.model == "offline-responder"
    assert draft.language == "pt-BR"
    assert draft.hold_reason is None
    body = draft.body_text
    assert "Pedido #1001 (feito em 28/09/2025)" in body
    assert "Envio: enviado" in body
    assert "Rastreio: Correios BR123456789BR - https://t.example/BR1" in body
    assert "Previsão de entrega: 06/10/2025" in body
    assert body.endswith("\n\nEquipe Loja Demo")


def test_english_reply_and_formal_tone() -> None:
    store = StoreVoice("Demo Shop", tone="formal", signature="The Demo Shop team")
    draft = offline.OfflineResponder().draft(
        EmailFacts("a@example.com", "Late", "Where is it?"),
        classification("shipping_delay", "en"),
        ReplyContext(store, [ORDER]),
    )
    assert draft.body_text.startswith("Dear customer,")
    assert "Order #1001 (placed on Sep 28, 2025)" in draft.body_text
    assert "Tracking: Correios BR123456789BR" in draft.body_text
    assert "sorry for the wait" in draft.body_text


def test_no_order_reply_is_identical_whatever_number_was_asked() -> None:
    responder = offline.OfflineResponder()
    texts = {
        responder.draft(
            EmailFacts("m@example.com", "Pedido", f"Status do pedido {n}?"),
            classification("order_status", "pt-BR"),
            ReplyContext(STORE, []),
        ).body_text
        for n in ("#1001", "#9999", "")
    }
    assert len(texts) == 1
    [text] = texts
    assert "Não conseguimos localizar um pedido" in text
    assert "#1001" in text  # only as the format example, same for everyone


@pytest.mark.parametrize("language", ["pt-BR", "en"])
@pytest.mark.parametrize("intent", ["return_refund", "cancellation"])
def test_never_promises_refunds_or_cancellations(intent: str, language: str) -> None:
    draft = offline.OfflineResponder().draft(
        EmailFacts("a@example.com", "x", "y"),
        classification(intent, language),
        ReplyContext(STORE, [ORDER]),
    )
    text = draft.body_text.lower()
    for promise in (
        "will refund",
        "has been cancelled",
        "reembolsaremos",
        "foi cancelado",
        "we will cancel",
        "vamos cancelar",
        "refund has been",
    ):
        assert promise not in text
    assert ("team will review" in text) or ("equipe vai analisar" in text)


def test_needs_human_holds_the_draft() -> None:
    draft = offline.OfflineResponder().draft(
        EmailFacts("a@example.com", "x", "y"),
        classification("complaint", "en", needs_human=True),
        ReplyContext(STORE, []),
    )
    assert draft.hold_reason == HOLD_NEEDS_HUMAN


def test_store_language_overrides_customer_language() -> None:
    store = StoreVoice("Shop", reply_language="en")
    draft = offline.OfflineResponder().draft(
        EmailFacts("a@example.com", "x", "y"),
        classification("other", "pt-BR"),
        ReplyContext(store, []),
    )
    assert draft.language == "en"
    assert "We have received your message" in draft.body_text


RETURNS_POLICY = KnowledgeEntry(
    "returns",
    "Trocas e devoluções",
    "Você pode devolver ou trocar qualquer produto em até 30 dias corridos após o recebimento.",
)
GIFT_FAQ = KnowledgeEntry("faq", "Embalagem para presente", "Embalagem para presente: R$ 9,90.")


def test_a_returns_question_is_answered_with_the_stores_own_policy() -> None:
    email = EmailFacts("c@example.com", "Devolução", "Quero devolver o tênis, ficou apertado.")
    responder = offline.OfflineResponder()
    classification = responder.classify(email)
    assert classification.intent == "return_refund"
    context = ReplyContext(StoreVoice("Loja"), knowledge=[RETURNS_POLICY, GIFT_FAQ])
    body = responder.draft(email, classification, context).body_text
    assert "Trocas e devoluções:" in body
    assert "em até 30 dias corridos" in body
    assert "Embalagem para presente" not in body


def test_an_entry_on_another_topic_is_not_quoted_for_a_returns_question() -> None:
    body = offline.compose_reply("return_refund", [], "pt-BR", "friendly", knowledge=[GIFT_FAQ])
    assert "Embalagem" not in body


def test_a_complaint_never_quotes_a_policy() -> None:
    body = offline.compose_reply("complaint", [], "pt-BR", "friendly", knowledge=[RETURNS_POLICY])
    assert "30 dias" not in body


def test_a_question_the_rules_cannot_place_gets_the_best_entry() -> None:
    body = offline.compose_reply("other", [], "pt-BR", "friendly", knowledge=[GIFT_FAQ])
    assert "Embalagem para presente: R$ 9,90." in body


def test_without_knowledge_the_reply_is_the_template() -> None:
    with_none = offline.compose_reply("return_refund", [], "pt-BR", "friendly", knowledge=[])
    assert with_none == offline.compose_reply("return_refund", [], "pt-BR", "friendly")
    assert "30 dias" not in with_none


def test_a_policy_in_another_language_than_the_reply_is_not_quoted() -> None:
    english = offline.compose_reply(
        "return_refund", [], "en", "friendly", knowledge=[RETURNS_POLICY]
    )
    assert "30 dias" not in english
    policy = KnowledgeEntry("returns", "Returns", "You can return any item within 30 days.")
    assert "within 30 days" in offline.compose_reply(
        "return_refund", [], "en", "friendly", knowledge=[policy]
    )


# -- Spanish, products, shipment events, cancellation and refunds ----------------------------------

SCARF = ProductFacts(
    title="Wool Scarf",
    url="https://lojaexemplo.com.br/products/wool-scarf",
    available=True,
    price="129.00 BRL",
    variants=[
        VariantFacts("Navy", "129.00 BRL", True),
        VariantFacts("Burgundy", "129.00 BRL", False),
    ],
)


def product_classification(language: str) -> Classification:
    return Classification(
        intent="product_question",
        language=language,
        sentiment="neutral",
        needs_human=False,
        confidence=0.85,
    )


@pytest.mark.parametrize(
    ("language", "price", "available", "sold_out", "link"),
    [
        ("pt-BR", "R$ 129,00", "disponível", "esgotado", "Veja na loja"),
        ("en", "R$ 129.00", "available", "sold out", "See it in the shop"),
        ("es", "R$ 129,00", "disponible", "agotado", "Míralo en la tienda"),
    ],
)
def test_a_product_question_is_answered_from_the_catalogue(
    language: str, price: str, available: str, sold_out: str, link: str
) -> None:
    email = EmailFacts(sender="a@example.com", subject="Wool scarf?", body="Navy?")
    draft = offline.OfflineResponder().draft(
        email,
        product_classification(language),
        ReplyContext(store=StoreVoice(name="Loja"), products=[SCARF]),
    )
    body = draft.body_text
    assert f"Wool Scarf - {price} - {available}" in body
    assert f"Navy ({available})" in body and f"Burgundy ({sold_out})" in body
    assert f"{link}: https://lojaexemplo.com.br/products/wool-scarf" in body
    # The catalogue is the answer: no "our team will check" paragraph.
    generic = offline._TEXT[offline._lang_key(language)]["product_question"]
    assert generic not in body
    assert draft.hold_reason is None and draft.language == language


def test_a_product_question_without_catalogue_facts_keeps_the_honest_generic_answer() -> None:
    body = offline.compose_reply("product_question", [], "es", "friendly")
    assert offline._TEXT["es"]["product_question"] in body


def test_spanish_is_recognised() -> None:
    c = offline.classify_text("¿Tienen la bufanda en azul?", "Hola, ¿cuánto cuesta? Gracias")
    assert c.language == "es" and c.intent == "product_question"
    assert offline.classify_text("Mi pedido", "Hola, ¿dónde está mi pedido #1005?").language == "es"
    assert offline.detect_language("Obrigada, quando chega meu pedido?") == "pt-BR"


def test_an_order_reply_states_the_latest_shipment_event() -> None:
    order = OrderFacts(
        name="#1001",
        created_at="2025-09-28T14:12:00Z",
        email="a@example.com",
        customer_email=None,
        financial_status="PAID",
        fulfillment_status="FULFILLED",
        fulfillments=[
            FulfillmentFacts(
                status="IN_TRANSIT",
                estimated_delivery_at="2025-10-06T23:59:00Z",
                events=[
                    ShipmentEvent("IN_TRANSIT", "2025-10-01T08:45:00Z", "Cajamar/SP para Curitiba"),
                    ShipmentEvent("LABEL_PRINTED", "2025-09-29T10:00:00Z"),
                ],
            )
        ],
    )
    pt = offline.compose_reply("order_status", [order], "pt-BR", "friendly")
    assert "Última atualização (01/10/2025): em trânsito - Cajamar/SP para Curitiba" in pt
    assert "Previsão de entrega: 06/10/2025" in pt
    en = offline.compose_reply("order_status", [order], "en", "friendly")
    assert "Latest update (Oct 1, 2025): in transit - Cajamar/SP para Curitiba" in en


def test_a_cancelled_and_refunded_order_says_so_without_an_estimated_delivery() -> None:
    order = OrderFacts(
        name="#1005",
        created_at="2025-09-25T16:30:00Z",
        email="lucia@example.es",
        customer_email=None,
        financial_status="REFUNDED",
        fulfillment_status="UNFULFILLED",
        fulfillments=[FulfillmentFacts(status=None, estimated_delivery_at="2025-10-01T00:00:00Z")],
        cancelled_at="2025-09-26T09:00:00Z",
        refunds=[RefundFacts("2025-09-26T09:05:00Z", "45.00 BRL")],
    )
    body = offline.compose_reply("order_status", [order], "es", "friendly")
    assert "Pedido cancelado el 26/09/2025" in body
    assert "Reembolso de R$ 45,00 el 26/09/2025" in body
    assert "Pago: reembolsado" in body
    assert "Entrega prevista" not in body


def test_prices_are_written_for_the_reply_language() -> None:
    assert offline.format_price("79.90-99.90 BRL", "pt-BR") == "R$ 79,90 - R$ 99,90"
    assert offline.format_price("12.50 CHF", "en") == "CHF 12.50"
    assert offline.format_price("not a price", "en") == "not a price"
    assert offline.format_price(None, "en") is None
