"""Building the auto-reply (worker.compose): subject, threading, auto-reply markers, encodings;
and the pure SMTP helpers (envelope, dot-stuffing, error classification)."""

from __future__ import annotations

import email
import email.policy
import smtplib
import ssl
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest

from worker.compose import (
    MAX_REFERENCES,
    build_reply,
    reply_message_id,
    reply_subject,
    thread_references,
)
from worker.errors import PermanentError, TransientError
from worker.smtp import classify_smtp_failure, dot_stuff, envelope, message_bytes

JOB_ID = "3f0c6a1e-7d7b-4c2e-9d7e-0a9b1c2d3e4f"
ORIGINAL_ID = "<CAF=kx9Q2uX8@mail.example.com>"


def reply(**overrides: object) -> EmailMessage:
    fields: dict[str, object] = {
        "from_address": "support@shop.test",
        "from_name": "Shop Support",
        "to_address": "customer@example.com",
        "original_subject": "Where is my order #1001?",
        "in_reply_to": ORIGINAL_ID,
        "references": [],
        "body_text": "Hello,\nyour order shipped yesterday.\n",
        "message_id": reply_message_id(JOB_ID, "shop.test"),
        "date": datetime(2025, 3, 4, 12, 30, tzinfo=UTC),
    }
    fields.update(overrides)
    return build_reply(**fields)  # type: ignore[arg-type]


def wire(message: EmailMessage) -> EmailMessage:
    """What a receiving client sees: the sent bytes parsed back."""
    raw = message_bytes(message).replace(b"\r\n", b"\n")
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("Where is my order?", "Re: Where is my order?"),
        ("Re: Where is my order?", "Re: Where is my order?"),
        ("RE: re: Re:Where is my order?", "Re: Where is my order?"),
        ("Re[2]: Where is my order?", "Re: Where is my order?"),
        ("RES: Pedido atrasado", "Re: Pedido atrasado"),
        ("AW: Bestellung", "Re: Bestellung"),
        ("Fwd: Invoice", "Re: Fwd: Invoice"),
        ("Regarding my order", "Re: Regarding my order"),
        ("", "Re:"),
        (None, "Re:"),
        ("  many   spaces\tand\ttabs ", "Re: many spaces and tabs"),
    ],
)
def test_reply_subject_adds_re_once(original: str | None, expected: str) -> None:
    assert reply_subject(original) == expected


def test_english_reply_has_threading_and_auto_reply_headers() -> None:
    sent = wire(reply(references=["<root@mail.example.com>"]))

    assert sent["From"].addresses[0].addr_spec == "support@shop.test"
    assert sent["From"].addresses[0].display_name == "Shop Support"
    assert sent["To"].addresses[0].addr_spec == "customer@example.com"
    assert sent["Subject"] == "Re: Where is my order #1001?"
    assert sent["Message-ID"] == f"<reply-{JOB_ID}@shop.test>"
    assert sent["In-Reply-To"] == ORIGINAL_ID
    assert sent["References"].split() == ["<root@mail.example.com>", ORIGINAL_ID]
    assert sent["Auto-Submitted"] == "auto-replied"
    assert sent["X-Auto-Response-Suppress"] == "All"
    assert sent["Date"] == "Tue, 04 Mar 2025 12:30:00 +0000"
    assert sent.get_content_type() == "text/plain"
    assert sent.get_content() == "Hello,\nyour order shipped yesterday.\n"


def test_portuguese_reply_encodes_headers_and_keeps_the_wire_7bit() -> None:
    message = reply(
        from_name="Loja Ação",
        # worker.mime hands over the subject already decoded from its RFC 2047 form.
        original_subject="Pedido não chegou — urgente",
        body_text="Olá, Conceição!\nSeu pedido nº 1001 já saiu para entrega.",
    )
    raw = message_bytes(message)

    assert raw.isascii(), "headers are RFC 2047-encoded and the body quoted-printable"
    assert b"=?utf-8?" in raw
    sent = wire(message)
    assert sent["Subject"] == "Re: Pedido não chegou — urgente"
    assert sent["From"].addresses[0].display_name == "Loja Ação"
    assert sent["Content-Transfer-Encoding"] == "quoted-printable"
    assert sent.get_content_charset() == "utf-8"
    assert sent.get_content() == "Olá, Conceição!\nSeu pedido nº 1001 já saiu para entrega.\n"


def test_encoded_original_subject_is_not_double_prefixed() -> None:
    inbound = email.message_from_bytes(
        b"Subject: =?iso-8859-1?q?RES=3A_Troca_de_tamanho_=E9_poss=EDvel=3F?=\n\nhi\n",
        policy=email.policy.default,
    )
    sent = wire(reply(original_subject=str(inbound["Subject"])))
    assert sent["Subject"] == "Re: Troca de tamanho é possível?"


def test_long_message_ids_stay_verbatim_and_are_folded_between_ids() -> None:
    long_id = "<CAHx8kLm0" + "x" * 90 + "@mail.gmail.com>"
    refs = [f"<{i}.{'y' * 60}@mail.example.com>" for i in range(5)]
    raw = message_bytes(reply(in_reply_to=long_id, references=refs))

    header_block = raw.split(b"\r\n\r\n", 1)[0]
    for line in header_block.split(b"\r\n"):
        if line.startswith((b"In-Reply-To", b"References", b" <")):
            assert b"=?" not in line, "an RFC 2047 encoded Message-ID breaks threading"
        assert len(line) <= 998
    sent = wire(reply(in_reply_to=long_id, references=refs))
    assert sent["In-Reply-To"] == long_id
    assert sent["References"].split() == [*refs, long_id]


def test_references_are_bounded_keeping_the_root_and_the_latest() -> None:
    refs = [f"<m{i}@example.com>" for i in range(40)]
    thread = thread_references(refs, "<parent@example.com>")

    assert len(thread) == MAX_REFERENCES
    assert thread[0] == "<m0@example.com>"
    assert thread[-1] == "<parent@example.com>"
    assert thread[-2] == "<m39@example.com>"


def test_references_drop_duplicates_and_junk() -> None:
    thread = thread_references(
        ["<a@x>", "not-an-id", "<a@x> <b@x>", "<ünïcode@x>"], "<b@x>"
    )
    assert thread == ["<a@x>", "<b@x>"]


def test_original_without_message_id_gets_no_threading_headers() -> None:
    sent = wire(reply(in_reply_to=None, references=[]))
    assert "In-Reply-To" not in sent
    assert "References" not in sent


def test_untrusted_subject_and_name_cannot_inject_headers() -> None:
    sent = wire(
        reply(
            original_subject="Hi\r\nBcc: victim@example.com",
            from_name="Shop\nX-Evil: 1",
        )
    )
    assert "Bcc" not in sent
    assert "X-Evil" not in sent
    assert sent["Subject"] == "Re: Hi Bcc: victim@example.com"


def test_invalid_recipient_is_a_permanent_error() -> None:
    with pytest.raises(PermanentError) as caught:
        reply(to_address="not an address@@")
    assert caught.value.service == "smtp"


def test_naive_date_is_taken_as_utc() -> None:
    sent = wire(reply(date=datetime(2025, 1, 2, 3, 4, 5)))
    assert sent["Date"] == "Thu, 02 Jan 2025 03:04:05 +0000"


def test_reply_message_id_is_deterministic_per_job() -> None:
    first = reply_message_id(JOB_ID, "shop.test")
    assert first == reply_message_id(JOB_ID.upper(), "Shop.Test.")
    assert first == reply_message_id(JOB_ID, "support@shop.test")
    assert first != reply_message_id(str(uuid.uuid4()), "shop.test")
    assert reply_message_id(JOB_ID, "lojação.test") == f"<reply-{JOB_ID}@xn--lojao-dra1a.test>"


@pytest.mark.parametrize(("job_id", "domain"), [("not-a-uuid", "shop.test"), (JOB_ID, "")])
def test_reply_message_id_rejects_junk(job_id: str, domain: str) -> None:
    with pytest.raises(ValueError):
        reply_message_id(job_id, domain)


def test_envelope_and_dot_stuffing() -> None:
    message = reply(body_text=".hidden line\n..two dots\nend")
    message["Bcc"] = "audit@shop.test"

    sender, recipients = envelope(message)
    assert sender == "support@shop.test"
    assert recipients == ["customer@example.com", "audit@shop.test"]
    raw = message_bytes(message)
    assert b"Bcc" not in raw
    data = dot_stuff(raw)
    assert data.endswith(b"\r\n.\r\n")
    assert b"\r\n..hidden line" in data or b"\r\n=2Ehidden" in data
    assert dot_stuff(b"a\r\n.b") == b"a\r\n..b\r\n.\r\n"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (smtplib.SMTPRecipientsRefused({"a@x": (550, b"5.1.1 no such user")}), PermanentError),
        (smtplib.SMTPRecipientsRefused({"a@x": (451, b"4.3.0 try later")}), TransientError),
        (smtplib.SMTPAuthenticationError(535, b"5.7.8 bad credentials"), PermanentError),
        (smtplib.SMTPAuthenticationError(454, b"4.7.0 temporary failure"), TransientError),
        (smtplib.SMTPSenderRefused(553, b"not allowed", "support@shop.test"), PermanentError),
        (smtplib.SMTPDataError(452, b"insufficient storage"), TransientError),
        (smtplib.SMTPDataError(554, b"rejected as spam"), PermanentError),
        (smtplib.SMTPServerDisconnected("closed"), TransientError),
        (smtplib.SMTPResponseException(-1, b"no reply"), TransientError),
        (smtplib.SMTPNotSupportedError("AUTH not supported"), PermanentError),
        (smtplib.SMTPException("No suitable authentication method found."), PermanentError),
        (TimeoutError("timed out"), TransientError),
        (ConnectionRefusedError(111, "Connection refused"), TransientError),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), TransientError),
    ],
)
def test_smtp_failures_are_classified(exc: BaseException, expected: type) -> None:
    error = classify_smtp_failure(exc, "send")
    assert type(error) is expected
    assert error.service == "smtp"
