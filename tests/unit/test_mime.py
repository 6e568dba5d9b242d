"""MIME parsing on real-world samples: encodings, HTML, threading, attachments, broken mail."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tests.unit.data import load_eml, sample_names
from worker.mime import (
    Attachment,
    ParsedEmail,
    decode_header_value,
    header_only_stub,
    html_to_text,
    message_id_list,
    normalize_message_id,
    parse_message,
    synthetic_message_id,
)

BRT = timezone(timedelta(hours=-3))


def test_portuguese_customer_with_latin1_subject_and_body() -> None:
    email = parse_message(load_eml("customer_pt_iso8859.eml"), uid=42)
    assert email.message_id == "<5f3e2a1b.0a1b2c3d@uol.com.br>"
    assert email.from_address == "joao.silva@uol.com.br"
    assert email.from_name == "João Silva"
    assert email.subject == "Onde está meu pedido #1234?"
    assert email.to_addresses == ("support@lojaexemplo.com.br",)
    assert email.date == datetime(2025, 3, 10, 9, 12, 40, tzinfo=BRT)
    assert email.body_text == (
        "Bom dia,\n\nFiz o pedido #1234 há 10 dias e até agora não recebi o código de "
        "rastreamento. Poderiam verificar, por favor?\n\nObrigado,\nJoão Silva"
    )
    assert email.uid == 42
    assert email.defects == ()
    assert not email.has_synthetic_message_id


def test_gmail_thread_reply_with_attachment_and_quoted_text() -> None:
    email = parse_message(load_eml("customer_en_thread_reply.eml"))
    assert email.from_address == "emily.j.carter@gmail.com"
    # The comma inside the quoted display name must not split the address.
    assert email.from_name == "Carter, Emily"
    assert email.cc_addresses == ("emily.work@carterdesign.example",)
    assert email.in_reply_to == "<reply.1c2d3e@lojaexemplo.com.br>"
    assert email.references == ("<CAH2k9vQ1x@mail.gmail.com>", "<reply.1c2d3e@lojaexemplo.com.br>")
    # text/plain is preferred over the HTML alternative; the quoted reply is kept.
    assert email.body_text.startswith("Hi,\n\nThanks for the quick answer.")
    assert "> Hi Emily, your order #1055 shipped today" in email.body_text
    assert "<div" not in email.body_text
    assert email.attachments == (Attachment("tracking screen.jpg", "image/jpeg", 1046),)
    assert email.date is not None and email.date.astimezone(UTC) == datetime(
        2025, 3, 14, 22, 22, 7, tzinfo=UTC
    )


def test_html_only_mail_becomes_readable_text() -> None:
    email = parse_message(load_eml("html_only_pt.eml"))
    assert email.body_text == (
        "Olá, tudo bem?\n\n"
        "Recebi o pedido #2087 mas a camiseta veio no tamanho errado (pedi M e veio GG). "
        "Quero trocar.\n\n"
        "- Produto: Camiseta Básica Preta\n"
        "- Tamanho pedido: M\n\n"
        "Como faço a devolução? Vi a política em nosso site de trocas "
        "(https://lojaexemplo.com.br/pages/trocas).\n\n"
        "Att,\nFernanda Costa"
    )
    assert email.link_count == 1


def test_html_to_text_drops_scripts_styles_and_comments() -> None:
    html = (
        "<html><head><title>T</title><style>p{color:red}</style></head><body>"
        "<script>steal()</script><!-- hidden --><p>Hello&nbsp;<b>there</b>,</p>"
        "<p>line one<br>line   two</p><pre>  keep\n  spacing</pre>"
        "<a href='https://x.example/a'>https://x.example/a</a></body></html>"
    )
    assert html_to_text(html) == (
        "Hello there,\n\nline one\nline two\n\nkeep\nspacing\nhttps://x.example/a"
    )


def test_missing_message_id_gets_a_stable_synthetic_one() -> None:
    raw = load_eml("no_message_id.eml")
    email = parse_message(raw)
    assert email.has_synthetic_message_id
    assert email.message_id.startswith("<") and email.message_id.endswith("@synthetic.invalid>")
    assert "missing_message_id" in email.defects
    # The same message, delivered again through another route, gets the same id.
    redelivered = raw.replace(b"198.51.100.23", b"192.0.2.99").replace(
        b"Return-Path: <rafael.lima@terra.com.br>\n", b""
    )
    assert parse_message(redelivered, uid=99).message_id == email.message_id
    assert parse_message(load_eml("no_message_id.eml", crlf=True)).message_id == email.message_id
    # A different message does not collide.
    other = raw.replace(b"Cancelar pedido 3021", b"Cancelar pedido 3022")
    assert parse_message(other).message_id != email.message_id
    assert synthetic_message_id(raw) == email.message_id


def test_malformed_headers_never_raise_and_are_recorded() -> None:
    email = parse_message(load_eml("malformed_headers.eml"))
    assert email.from_address == "broken.sender@example.com"
    assert email.from_name == "Broken é Sender"
    assert email.to_addresses == ("support@lojaexemplo.com.br",)
    assert email.subject == "Pedido não chegou ça va café😡"
    assert email.date is None
    assert email.in_reply_to is None
    assert email.references == ("<a@b>",)
    assert email.has_synthetic_message_id
    assert email.body_text == "Olá, meu pedido não chegou"
    assert {"bad_message_id", "unparseable_date", "unknown_charset:utf-99"} <= set(email.defects)
    # Postgres rejects NUL and lone surrogates: none may reach the JSON we send.
    encoded = json.dumps(email.to_ingest_json(), ensure_ascii=False)
    assert "\x00" not in encoded
    assert not any("\ud800" <= c <= "\udfff" for c in encoded)


@pytest.mark.parametrize("name", sample_names())
def test_every_sample_parses_to_json_safe_output(name: str) -> None:
    for raw in (load_eml(name), load_eml(name, crlf=True)):
        email = parse_message(raw, uid=7)
        data = email.to_ingest_json()
        assert set(data) == {
            "message_id", "from_address", "from_name", "reply_to", "to_addresses",
            "cc_addresses", "subject", "date", "in_reply_to", "references", "headers",
            "body_text", "attachments", "size_bytes", "uid", "skip_reason",
        }  # fmt: skip
        assert data["size_bytes"] == len(raw)
        assert data["message_id"].startswith("<") and data["message_id"].endswith(">")
        text = json.dumps(data, ensure_ascii=False)
        assert "\x00" not in text
        assert all(key == key.lower() for key in data["headers"])
        # A stored row rebuilds the same message for the process steps.
        assert ParsedEmail.from_row(json.loads(text)) == email


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe garbage without headers",
        b"Subject: only a header",
        b"Content-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: text/plain\n\nhi",
        b"Content-Type: multipart/alternative\n\nno boundary at all",
        b"From: <>\nTo: ,,,\nDate: \nMessage-ID: <>\n\n",
        b"Subject: =?utf-8?q?unterminated\nContent-Type: text/plain; charset=\n\nx",
        b"Content-Type: text/plain; charset*=utf-8''%E2%82\n\nx",
    ],
)
def test_garbage_never_raises(raw: bytes) -> None:
    email = parse_message(raw)
    assert email.message_id.endswith(">")
    assert email.size_bytes == len(raw)
    json.dumps(email.to_ingest_json())


def test_header_section_with_a_non_header_line_keeps_the_rest_as_body() -> None:
    email = parse_message(b"From: a@example.com\nSubject: x\nnot a header\nX-Loop: y\n\nbody")
    assert email.from_address == "a@example.com"
    assert "MissingHeaderBodySeparatorDefect" in email.defects
    assert "x-loop" not in email.headers
    assert "body" in email.body_text


def test_loop_relevant_headers_are_kept_lower_cased() -> None:
    email = parse_message(load_eml("mailchimp_newsletter.eml"))
    assert email.headers["precedence"] == "bulk"
    assert email.headers["list-unsubscribe"].startswith("<https://fornecedoratacado.us21")
    assert email.headers["x-mc-user"] == "abc123def456"
    assert "received" not in email.headers and "date" not in email.headers
    assert email.subject == "🔥 Coleção de outono chegou com 30% OFF"
    assert email.reply_to == "contato@fornecedoratacado.com.br"


def test_repeated_headers_are_joined() -> None:
    email = parse_message(b"X-Loop: helpdesk@a.example\nX-Loop: support@b.example\n\nx")
    assert email.headers["x-loop"] == "helpdesk@a.example, support@b.example"


def test_delivery_reports() -> None:
    ndr = parse_message(load_eml("exchange_ndr.eml"))
    assert ndr.is_delivery_report
    assert ndr.content_type == "multipart/report"
    # The human-readable part is the body; the bounced original is an attachment, not our text.
    assert ndr.body_text.startswith("Your message to joao.old@contoso.com couldn't be delivered.")
    assert "seu pedido #1188" not in ndr.body_text
    assert [a.content_type for a in ndr.attachments] == [
        "message/delivery-status",
        "message/rfc822",
    ]
    assert parse_message(load_eml("postfix_bounce.eml")).is_delivery_report
    assert not parse_message(load_eml("exim_bounce.eml")).is_delivery_report
    assert not parse_message(load_eml("customer_pt_iso8859.eml")).is_delivery_report


def test_body_is_capped() -> None:
    raw = b"From: a@example.com\nSubject: long\n\n" + b"quoted history line\n" * 10_000
    email = parse_message(raw, max_body_chars=1_000)
    assert len(email.body_text) == 1_000
    assert "body_truncated" in email.defects


def test_header_only_stub_for_oversized_messages() -> None:
    raw = load_eml("customer_en_thread_reply.eml")
    headers = raw.split(b"\n\n", 1)[0]
    stub = header_only_stub(headers, uid=5, size_bytes=30_000_000)
    full = parse_message(raw)
    assert stub.skip_reason == "oversized"
    assert stub.size_bytes == 30_000_000
    assert stub.body_text == "" and stub.attachments == ()
    assert (stub.message_id, stub.subject, stub.from_address, stub.in_reply_to) == (
        full.message_id,
        full.subject,
        full.from_address,
        full.in_reply_to,
    )
    data = stub.to_ingest_json()
    assert (data["skip_reason"], data["uid"], data["body_text"]) == ("oversized", 5, "")
    # Without a Message-ID the stub and a full parse still agree on the synthetic id.
    raw = load_eml("no_message_id.eml")
    stub = header_only_stub(raw.split(b"\n\n", 1)[0], size_bytes=1)
    assert stub.message_id == parse_message(raw).message_id


def test_to_ingest_json_shape() -> None:
    data = parse_message(load_eml("customer_en_thread_reply.eml"), uid=11).to_ingest_json()
    assert data["date"] == "2025-03-14T18:22:07-04:00"
    assert data["attachments"] == [
        {"filename": "tracking screen.jpg", "content_type": "image/jpeg", "size": 1046}
    ]
    assert data["references"] == [
        "<CAH2k9vQ1x@mail.gmail.com>",
        "<reply.1c2d3e@lojaexemplo.com.br>",
    ]
    assert data["uid"] == 11
    assert data["skip_reason"] is None


def test_from_row_reads_a_messages_row() -> None:
    row = {
        "id": "0b7c...",
        "message_id": "<x@y>",
        "from_address": "ana@example.com",
        "sent_at": "2025-03-10T12:00:00+00:00",
        "imap_uid": 9,
        "headers": {"auto-submitted": "auto-replied"},
        "to_addresses": None,
        "attachments": [],
    }
    email = ParsedEmail.from_row(row)
    assert email.date == datetime(2025, 3, 10, 12, tzinfo=UTC)
    assert email.uid == 9
    assert email.headers == {"auto-submitted": "auto-replied"}
    assert email.to_addresses == ()
    assert email.message_id == "<x@y>"


def test_a_copy_stored_under_a_derived_key_keeps_its_real_message_id() -> None:
    row = {
        "message_id": "<x@y>#conflict-0123456789abcdef0123456789abcdef",
        "headers": {"message-id": "<x@y>"},
    }
    assert ParsedEmail.from_row(row).message_id == "<x@y>"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<abc@example.com>", "<abc@example.com>"),
        ("  <abc@example.com> (comment)", "<abc@example.com>"),
        ("<very-long-id\r\n @example.com>", "<very-long-id@example.com>"),
        ("abc@example.com", "<abc@example.com>"),
        ("two words", None),
        ("<>", None),
        ("", None),
        (None, None),
        ("<" + "a" * 600 + "@x>", None),
    ],
)
def test_normalize_message_id(value: str | None, expected: str | None) -> None:
    assert normalize_message_id(value) == expected


def test_message_id_list() -> None:
    assert message_id_list("<a@x> <b@x>\r\n <a@x>") == ("<a@x>", "<b@x>")
    assert message_id_list("a@x b@x") == ("<a@x>", "<b@x>")
    assert message_id_list("nothing here") == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=?UTF-8?B?T25kZSBlc3TDoSBtZXUgcGVkaWRvPw==?=", "Onde está meu pedido?"),
        ("=?windows-1252?Q?Devolu=E7=E3o_=96_pedido?=", "Devolução \u2013 pedido"),
        ("=?iso-8859-1?q?Pre=E7o?= e =?utf-8?q?entrega?=", "Preço e entrega"),
        ("Re: =?utf-8?q?Ol=C3=A1?=\r\n =?utf-8?q?_mundo?=", "Re: Olá mundo"),
        ("=?x-bogus?q?caf=E9?=", "café"),
        ("plain subject", "plain subject"),
    ],
)
def test_decode_header_value(value: str, expected: str) -> None:
    assert decode_header_value(value) == expected


def test_huge_and_deeply_nested_html_is_bounded() -> None:
    flat = b"<div><p>Ola <b>mundo</b></p></div>" * 40_000
    email = parse_message(b"From: a@example.com\nContent-Type: text/html\n\n" + flat)
    assert "html_truncated" in email.defects
    assert email.body_text.startswith("Ola mundo\n\nOla mundo")
    # html.parser nests unclosed tags; the converter must not recurse once per level.
    deep = b"<div>x" * 20_000
    email = parse_message(b"From: a@example.com\nContent-Type: text/html\n\n" + deep)
    assert email.body_text.count("x") == 20_000


def test_mail_that_breaks_the_parser_keeps_its_headers() -> None:
    depth = 2_000
    opening = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(depth)
    )
    closing = b"".join(b"--b%d--\n" % i for i in reversed(range(depth)))
    raw = (
        b"From: Ana <ana@example.com>\nSubject: nested\nMessage-ID: <deep@example.com>\n"
        + opening
        + b"Content-Type: text/plain\n\ninner text\n"
        + closing
    )
    email = parse_message(raw)
    assert any(d.startswith("parse_error:") for d in email.defects)
    assert (email.message_id, email.from_address, email.subject) == (
        "<deep@example.com>",
        "ana@example.com",
        "nested",
    )
    assert email.body_text.startswith("--b0\n")
    assert email.size_bytes == len(raw)


def test_only_the_topmost_authentication_results_is_kept() -> None:
    # A sender can write its own Authentication-Results below the receiving server's.
    raw = (
        b"Authentication-Results: mx.shop.test; dmarc=fail header.from=bank.example\r\n"
        b"Authentication-Results: forged.example; dmarc=pass\r\n"
        b"From: a@bank.example\r\nSubject: x\r\n\r\nbody\r\n"
    )
    assert parse_message(raw).headers["authentication-results"] == (
        "mx.shop.test; dmarc=fail header.from=bank.example"
    )
