"""Loop, auto-reply and bounce detection on real-world header sets (RFC 3834)."""

from __future__ import annotations

import dataclasses

import pytest

from tests.unit.data import load_eml
from worker.loops import auto_reply_reason, reply_cap_reached
from worker.mime import ParsedEmail, parse_message

STORE = {"support@lojaexemplo.com.br", "Contato@LojaExemplo.com.br"}


def reason(email: ParsedEmail) -> str | None:
    return auto_reply_reason(email, store_addresses=STORE)


def customer(**changes: object) -> ParsedEmail:
    """A real customer's message, with some fields changed."""
    email = parse_message(load_eml("customer_pt_iso8859.eml"))
    return dataclasses.replace(email, **changes)  # type: ignore[arg-type]


def with_headers(**headers: str) -> ParsedEmail:
    email = customer()
    merged = {**email.headers, **{k.replace("_", "-"): v for k, v in headers.items()}}
    return dataclasses.replace(email, headers=merged)


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ("gmail_vacation_en.eml", "auto_submitted"),
        ("outlook_oof_pt.eml", "auto_submitted"),
        ("exchange_ndr.eml", "bounce"),
        ("postfix_bounce.eml", "bounce"),
        ("exim_bounce.eml", "bounce"),
        ("mailing_list.eml", "precedence"),
        ("mailchimp_newsletter.eml", "precedence"),
        ("noreply_shipping_pt.eml", "noreply_sender"),
    ],
)
def test_machine_mail_is_never_answered(sample: str, expected: str) -> None:
    assert reason(parse_message(load_eml(sample))) == expected


@pytest.mark.parametrize(
    "sample",
    [
        "customer_pt_iso8859.eml",
        "customer_en_thread_reply.eml",
        "customer_en_shopify_question.eml",
        "html_only_pt.eml",
        "no_message_id.eml",
        "angry_customer_caps_en.eml",
        "prompt_injection_en.eml",
    ],
)
def test_customers_are_answered(sample: str) -> None:
    assert reason(parse_message(load_eml(sample))) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"auto-submitted": "auto-replied"}, "auto_submitted"),
        ({"auto-submitted": "auto-generated"}, "auto_submitted"),
        ({"auto-submitted": "auto-notified; owner-email=x@y.example"}, "auto_submitted"),
        ({"auto-submitted": "no"}, None),
        ({"auto-submitted": "No (manually sent)"}, None),
        ({"x-autoreply": "yes"}, "autoreply_header"),
        ({"x-autorespond": "Out of office"}, "autoreply_header"),
        ({"x-autoreply": "no"}, None),
        ({"precedence": "bulk"}, "precedence"),
        ({"precedence": "Junk"}, "precedence"),
        ({"precedence": "list"}, "precedence"),
        ({"precedence": "auto_reply"}, "precedence"),
        ({"precedence": "first-class"}, None),
        ({"list-id": "<announce.lists.example.org>"}, "mailing_list"),
        ({"list-unsubscribe": "<mailto:leave@lists.example.org>"}, "mailing_list"),
        ({"x-loop": "helpdesk@othershop.example"}, "loop"),
        ({"x-loop": "support@lojaexemplo.com.br"}, "loop"),
        ({"return-path": "<>"}, "null_return_path"),
        ({"return-path": "< >"}, "null_return_path"),
        ({"return-path": "<joao.silva@uol.com.br>"}, None),
        ({"x-auto-response-suppress": "All"}, "auto_response_suppressed"),
        ({"x-auto-response-suppress": "DR, OOF, AutoReply"}, "auto_response_suppressed"),
        ({"x-auto-response-suppress": "RN, NRN"}, None),
        ({"x-failed-recipients": "a@example.com"}, "bounce"),
        ({"content-type": "multipart/report; report-type=delivery-status; boundary=x"}, "bounce"),
        ({"content-type": "multipart/report; report-type=disposition-notification"}, None),
    ],
)
def test_single_headers(headers: dict[str, str], expected: str | None) -> None:
    email = customer()
    email = dataclasses.replace(email, headers={**email.headers, **headers})
    assert reason(email) == expected


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("MAILER-DAEMON@mx.example.com", "bounce"),
        ("mailer_daemon@mx.example.com", "bounce"),
        ("postmaster@example.com", "bounce"),
        ("bounces+12345-abc@em.example.com", "bounce"),
        ("bounce@example.com", "bounce"),
        ("mail-delivery-subsystem@google.example", "bounce"),
        ("noreply@shop.example", "noreply_sender"),
        ("no-reply@accounts.example", "noreply_sender"),
        ("no_reply@example.com", "noreply_sender"),
        ("do-not-reply@example.com", "noreply_sender"),
        ("donotreply@example.com", "noreply_sender"),
        ("naoresponda@banco.example", "noreply_sender"),
        ("nao-responda@loja.example", "noreply_sender"),
        ("orders-noreply@marketplace.example", "noreply_sender"),
        ("support@lojaexemplo.com.br", "own_address"),
        ("contato@lojaexemplo.com.br", "own_address"),
        # Real people whose addresses merely contain the words.
        ("noreen.reply@example.com", None),
        ("bouncer.bob@example.com", None),
        ("postmaster.general.fan@example.com", None),
        ("maria.respondao@example.com", None),
    ],
)
def test_senders(sender: str, expected: str | None) -> None:
    assert reason(customer(from_address=sender)) == expected


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Automatic reply: Your order", "auto_reply_subject"),
        ("Resposta automática: Re: Pedido #1234", "auto_reply_subject"),
        ("Out of Office: Re: Pedido", "auto_reply_subject"),
        ("Fora do escritório", "auto_reply_subject"),
        ("Auto: Re: entrega", "auto_reply_subject"),
        ("Undeliverable: Re: Pedido #1188", "bounce"),
        ("Mensagem não entregue: Re: troca", "bounce"),
        ("Delivery Status Notification (Failure)", "bounce"),
        # A customer writing about these things is still a customer.
        ("My package came back as undeliverable", None),
        ("I was out of office, now where is my order?", None),
        ("Re: Resposta automática não resolveu meu problema", None),
    ],
)
def test_subjects(subject: str, expected: str | None) -> None:
    assert reason(customer(subject=subject)) == expected


def test_store_addresses_compare_case_insensitively() -> None:
    email = customer(from_address="support@lojaexemplo.com.br")
    assert (
        auto_reply_reason(email, store_addresses=["SUPPORT@LOJAEXEMPLO.COM.BR "]) == "own_address"
    )
    assert auto_reply_reason(email, store_addresses=[]) is None


def test_bounce_wins_over_other_reasons() -> None:
    # A DSN often also carries Auto-Submitted; the more specific reason is reported.
    assert reason(parse_message(load_eml("postfix_bounce.eml"))) == "bounce"


def test_reply_cap() -> None:
    assert not reply_cap_reached(0, 3)
    assert not reply_cap_reached(2, 3)
    assert reply_cap_reached(3, 3)
    assert reply_cap_reached(7, 3)
