"""The reply guard (issue 13 item 4): neutral subjects and what a reply may say."""

from __future__ import annotations

import pytest

from worker import reply_guard, sender_auth
from worker.responder import (
    FulfillmentFacts,
    OrderFacts,
    ProductFacts,
    TrackingFacts,
    VariantFacts,
)

ORDER = OrderFacts(
    name="#1001",
    created_at="2025-09-28",
    email="ana@example.com",
    customer_email="ana@example.com",
    financial_status="PAID",
    fulfillment_status="FULFILLED",
    line_items=["Vestido de linho (1) R$ 189,90"],
    fulfillments=[
        FulfillmentFacts(
            status="IN_TRANSIT",
            tracking=[
                TrackingFacts(
                    "BR123456789BR",
                    "https://rastreamento.correios.com.br/app/index.php?objetos=BR123456789BR",
                    "Correios",
                )
            ],
        )
    ],
)
DOMAINS = ["lojaexemplo.com.br", "loja-demo.myshopify.com"]


def check(body: str, orders: list[OrderFacts] | None = None, store_text: str = "") -> str | None:
    return reply_guard.check_reply(
        body,
        store_domains=DOMAINS,
        orders=[ORDER] if orders is None else orders,
        store_text=store_text,
    )


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("Onde está meu pedido #1001?", "Re: Onde está meu pedido #1001?"),
        ("RE: Fwd: Re:  Pedido\t1001", "Re: Pedido 1001"),
        (
            "Your account is locked - verify at https://evil.example/login",
            "Re: Your message to Loja",
        ),
        ("Verify now: evil.example/login", "Re: Your message to Loja"),
        ("Write to refunds@evil.example", "Re: Your message to Loja"),
        ("www.evil.example", "Re: Your message to Loja"),
        ("", "Re: Your message to Loja"),
        ("Olá\x00 mundo\u202e", "Re: Olá mundo"),
    ],
)
def test_the_reflected_subject_is_neutralised(original: str, expected: str) -> None:
    assert reply_guard.safe_subject(original, "Loja") == expected


def test_long_attacker_text_is_cut_at_a_word() -> None:
    subject = reply_guard.safe_subject("URGENT " + "please read this notice " * 20, "Loja")
    assert subject.endswith("...") and len(subject) <= len("Re: ") + 80 + 3
    assert reply_guard.safe_subject(None, None) == "Re: Your message"


@pytest.mark.parametrize(
    "body",
    [
        "Seu pedido #1001 está a caminho: https://rastreamento.correios.com.br/app/index.php?x=1",
        "Veja em https://lojaexemplo.com.br/pedidos ou https://www.lojaexemplo.com.br/faq.",
        "O vestido custou R$ 189,90 e já foi enviado.",
        "Seu pedido #1001 de 28/09/2025 está a caminho. Rastreio BR123456789BR.",
        "Fale conosco: (11) 3456-7890",  # in the store's signature
    ],
)
def test_replies_within_the_facts_pass(body: str) -> None:
    assert check(body, store_text="Loja Exemplo - (11) 3456-7890") is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("Confirme seus dados em https://evil.example/login", "unexpected_link"),
        ("Acesse www.lojaexemplo.com.br.evil.example", "unexpected_link"),
        ("Para liberar o envio, pague a taxa via Pix para a chave abc", "payment_request"),
        ("Please send a gift card to release the parcel.", "payment_request"),
        ("Há uma taxa de R$ 49,90 para liberar a entrega.", "unexpected_amount"),
        ("A fee of $12.50 is due.", "unexpected_amount"),
        ("Ligue para +55 11 98765-4321 agora.", "unexpected_phone"),
        ("Call us at (415) 555-0199.", "unexpected_phone"),
        ("Retire no endereço com CEP 01310-100.", "unexpected_address"),
    ],
)
def test_replies_beyond_the_facts_are_held_with_the_reason(body: str, reason: str) -> None:
    assert check(body) == reason


def test_a_tracking_host_is_allowed_only_when_it_is_in_the_facts() -> None:
    body = "Rastreie em https://rastreamento.correios.com.br/app"
    assert check(body) is None
    assert check(body, orders=[]) == "unexpected_link"


@pytest.mark.parametrize(
    ("header", "verdict"),
    [
        ("mx.lojaexemplo.com.br; spf=pass smtp.mailfrom=a.com; dkim=pass; dmarc=pass", None),
        ("mx.lojaexemplo.com.br; dmarc=fail (p=reject) header.from=bank.example", "dmarc_fail"),
        ("mx.lojaexemplo.com.br; spf=fail smtp.mailfrom=x; dkim=none", "spf_fail"),
        ("mx.lojaexemplo.com.br; spf=fail smtp.mailfrom=x; dkim=pass header.d=x", None),
        ("mx.lojaexemplo.com.br; spf=softfail; dkim=none; dmarc=none", None),
        ("", None),
    ],
)
def test_sender_authentication_verdict(header: str, verdict: str | None) -> None:
    assert sender_auth.failure({"authentication-results": header} if header else {}) == verdict


SCARF = ProductFacts(
    title="Wool Scarf",
    url="https://www.lojaexemplo-store.com/products/wool-scarf",
    available=True,
    price="79.90-99.90 BRL",
    variants=[VariantFacts("Navy", "99.90 BRL", True)],
)


def test_a_product_page_and_its_prices_are_facts_a_reply_may_quote() -> None:
    body = (
        "The Wool Scarf costs from R$ 79,90 to R$ 99,90 (navy: R$ 99,90). "
        "See https://lojaexemplo-store.com/products/wool-scarf"
    )
    assert check(body) == reply_guard.UNEXPECTED_LINK  # without the catalogue facts
    allowed = reply_guard.check_reply(
        body, store_domains=DOMAINS, orders=[], products=[SCARF]
    )
    assert allowed is None
    # Another amount or another shop's page is still held.
    for extra, reason in (
        (" Today only R$ 49,90!", reply_guard.UNEXPECTED_AMOUNT),
        (" Or https://evil.example/scarf", reply_guard.UNEXPECTED_LINK),
    ):
        held = reply_guard.check_reply(
            body + extra, store_domains=DOMAINS, orders=[], products=[SCARF]
        )
        assert held == reason
