"""worker.quotes: a message's own text, without the quoted history and the signature, in the
quote styles of the mail clients our customers use (pt, en, es)."""

from __future__ import annotations

import time

import pytest

from worker.quotes import MAX_INPUT_CHARS, own_text

CASES = {
    "pt-gmail": (
        "Oi, ainda não recebi.\n\nObrigada,\nAna\n\n"
        "Em seg., 30 de nov. de 2026 às 10:00, Loja Aurora <suporte@aurora.com.br> escreveu:\n"
        "> Olá! Seu pedido foi enviado.\n> Abraços\n",
        "Oi, ainda não recebi.",
    ),
    "pt-gmail-folded-header": (
        "Oi, e a troca?\n\n"
        "Em seg., 30 de nov. de 2026 às 10:00, Loja Aurora <suporte@aurora.com.br>\n"
        "escreveu:\n> Olá! Seu pedido foi enviado.\n",
        "Oi, e a troca?",
    ),
    "pt-outlook": (
        "Segue a foto do defeito.\n\n"
        "De: Loja Aurora <suporte@aurora.com.br>\n"
        "Enviado: segunda-feira, 30 de novembro de 2026 10:00\n"
        "Para: ana@example.com\nAssunto: Seu pedido\n\nSeu pedido foi enviado.\n",
        "Segue a foto do defeito.",
    ),
    "pt-signature": (
        "Quero devolver o tênis.\n\nAtenciosamente,\nMaria Silva\n(11) 99999-0000\n",
        "Quero devolver o tênis.",
    ),
    "pt-sent-from-phone": ("Cadê meu pedido?\n\nEnviado do meu iPhone\n", "Cadê meu pedido?"),
    "en-gmail": (
        "Hi, where is it?\n\n"
        "On Mon, Nov 30, 2026 at 10:00 AM Shop <s@shop.example> wrote:\n"
        "> Your order shipped.\n",
        "Hi, where is it?",
    ),
    "en-outlook": (
        "Thanks, see below.\n\nFrom: Shop <s@shop.example>\n"
        "Sent: Monday, November 30, 2026 10:00\nTo: me@example.com\nSubject: Your order\n\n"
        "Your order shipped.\n",
        "Thanks, see below.",
    ),
    "en-original-message": (
        "Any news?\n\n-----Original Message-----\nFrom: Shop\nSent: Monday\n\nShipped.\n",
        "Any news?",
    ),
    "en-dash-signature": (
        "Where is my order?\n\n-- \nJohn Smith\nCEO, Example Ltd\n",
        "Where is my order?",
    ),
    "es-gmail": (
        "Hola, quiero devolver.\n\n"
        "El lun, 30 nov 2026 a las 10:00, Tienda (<t@tienda.example>) escribió:\n"
        "> Gracias por su compra\n",
        "Hola, quiero devolver.",
    ),
    "es-outlook": (
        "Adjunto la factura.\n\nDe: Tienda <t@tienda.example>\n"
        "Enviado: lunes, 30 de noviembre de 2026 10:00\nPara: juan@example.com\n"
        "Asunto: Su pedido\n\nSu pedido fue enviado.\n",
        "Adjunto la factura.",
    ),
    "bare-quoted-lines": (
        "Still waiting!\n> Your order shipped on Monday.\n> Tracking BR123\n",
        "Still waiting!",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_quote_and_signature_are_stripped(name: str) -> None:
    body, expected = CASES[name]
    assert own_text(body) == expected


def test_a_customers_hyphen_list_is_not_taken_for_a_signature() -> None:
    body = "Quero trocar:\n- Camiseta P\n- Calça M\nPode ser?"
    assert own_text(body) == body


def test_text_without_quotes_is_kept_whole_and_crlf_normalised() -> None:
    assert (
        own_text("Olá,\r\n\r\nonde está o pedido #1001?\r\n") == "Olá,\n\nonde está o pedido #1001?"
    )


@pytest.mark.parametrize("body", [None, "", "   \n"])
def test_nothing_stays_nothing(body: str | None) -> None:
    assert own_text(body) == ""


def test_a_reply_that_is_only_a_quote_leaves_nothing() -> None:
    assert own_text("> Your order shipped.\n> Tracking BR123\n") == ""


def test_hostile_input_is_bounded() -> None:
    # Header-like lines by the thousand: the regular expressions see at most MAX_INPUT_CHARS.
    body = "De: x\nPara: y\n" * 50_000 + "tail"
    started = time.perf_counter()
    text = own_text(body)
    assert len(text) <= MAX_INPUT_CHARS
    assert "tail" not in text
    # Not a timing assertion on speed, a guard against pathological (minutes-long) backtracking.
    assert time.perf_counter() - started < 30
