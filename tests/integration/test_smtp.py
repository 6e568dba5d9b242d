"""worker.smtp against a real SMTP server (aiosmtpd) and Dovecot: TLS modes, AUTH, refusals,
a connection lost after DATA, and resolving that in-doubt send through the Sent folder."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from tests.support.mail_servers import MailUser
from worker import compose, imap, smtp
from worker.devstack.dovecot import DovecotServer, free_port
from worker.devstack.smtp_sink import SmtpSink
from worker.devstack.tls import create_test_ca
from worker.errors import PermanentError, TransientError

pytestmark = pytest.mark.integration

TIMEOUT = 20.0  # seconds; generous for a loaded CI box, never reached on success
JOB_ID = "0b7e3c52-1f7a-4a36-8d0e-2a4d1c9e5f60"


def reply(to: str = "customer@example.com") -> EmailMessage:
    return compose.build_reply(
        from_address="sender@shop.test",
        from_name="Loja Exemplo",
        to_address=to,
        original_subject="Onde está meu pedido?",
        in_reply_to="<q1@example.com>",
        references=["<q0@example.com>"],
        body_text="Olá! Seu pedido #1001 foi enviado ontem.",
        message_id=compose.reply_message_id(JOB_ID, "shop.test"),
    )


def send(
    sink: SmtpSink,
    message: EmailMessage,
    *,
    password: str | None = None,
    ca_file: str | Path | None = "sink",
    copy_to: str | None = None,
) -> smtp.SendResult:
    return smtp.send_message(
        message,
        sink.host,
        sink.port,
        sink.tls_mode,
        sink.username,
        sink.password if password is None else password,
        timeout_seconds=TIMEOUT,
        ca_file=str(sink.ca.ca_file) if ca_file == "sink" else (str(ca_file) if ca_file else None),
        copy_to=copy_to,
    )


def test_the_trace_copy_is_an_envelope_recipient_only(smtp_sink: SmtpSink) -> None:
    result = send(smtp_sink, reply(), copy_to="support@shop.test")

    assert result.recipients == ("customer@example.com",)
    assert result.copy_to == "support@shop.test" and result.copy_refused is None
    [received] = smtp_sink.messages
    assert received.rcpt_tos == ("customer@example.com", "support@shop.test")
    assert "support@shop.test" not in received.data.decode()


def test_a_refused_trace_copy_still_delivers_to_the_customer(smtp_sink: SmtpSink) -> None:
    smtp_sink.refuse("support@shop.test")

    result = send(smtp_sink, reply(), copy_to="support@shop.test")

    assert result.recipients == ("customer@example.com",)
    assert result.copy_to is None and (result.copy_refused or "").startswith("550")
    [received] = smtp_sink.messages
    assert received.rcpt_tos == ("customer@example.com",)


def test_a_refused_customer_fails_even_when_the_copy_would_be_accepted(
    smtp_sink: SmtpSink,
) -> None:
    smtp_sink.refuse("customer@example.com")

    with pytest.raises(PermanentError):
        send(smtp_sink, reply(), copy_to="support@shop.test")
    assert smtp_sink.messages == []


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_sends_over_starttls_and_implicit_tls(
    mode: str, smtp_sink: SmtpSink, smtp_sink_implicit_tls: SmtpSink
) -> None:
    sink = smtp_sink if mode == "starttls" else smtp_sink_implicit_tls
    assert sink.tls_mode == mode

    result = send(sink, reply())

    assert result.recipients == ("customer@example.com",)
    assert result.response.startswith("250")
    [received] = sink.messages
    assert received.tls
    assert received.authenticated_as == "sender@shop.test"
    assert received.mail_from == "sender@shop.test"
    assert received.rcpt_tos == ("customer@example.com",)
    parsed = received.message()
    assert parsed["Message-ID"] == f"<reply-{JOB_ID}@shop.test>" == result.message_id
    assert parsed["Subject"] == "Re: Onde está meu pedido?"
    assert parsed["In-Reply-To"] == "<q1@example.com>"
    assert parsed["References"].split() == ["<q0@example.com>", "<q1@example.com>"]
    assert parsed["Auto-Submitted"] == "auto-replied"
    body = parsed.get_content().replace("\r\n", "\n")
    assert body == "Olá! Seu pedido #1001 foi enviado ontem.\n"


def test_a_retry_sends_the_same_message_id(smtp_sink: SmtpSink) -> None:
    send(smtp_sink, reply())
    send(smtp_sink, reply())
    ids = {m.message()["Message-ID"] for m in smtp_sink.messages}
    assert ids == {f"<reply-{JOB_ID}@shop.test>"}


def test_dot_lines_survive_the_transfer(smtp_sink: SmtpSink) -> None:
    message = compose.build_reply(
        from_address="sender@shop.test", from_name=None, to_address="c@example.com",
        original_subject="x", in_reply_to=None, references=[],
        body_text="line one\n.\n.hidden\nend", message_id="<dots@shop.test>",
    )
    send(smtp_sink, message)
    body = smtp_sink.messages[0].message().get_content().replace("\r\n", "\n")
    assert body == "line one\n.\n.hidden\nend\n"


def test_wrong_password_is_permanent(smtp_sink: SmtpSink) -> None:
    with pytest.raises(PermanentError) as caught:
        send(smtp_sink, reply(), password="wrong-password")
    assert caught.value.service == "smtp"
    assert "535" in str(caught.value)
    # smtplib tries each mechanism the server offers (PLAIN, then LOGIN) before giving up.
    assert smtp_sink.failed_logins >= 1
    assert smtp_sink.messages == []


def test_recipient_refused_550_is_permanent(smtp_sink: SmtpSink) -> None:
    smtp_sink.refuse("gone@example.com", 550)
    with pytest.raises(PermanentError, match="550"):
        send(smtp_sink, reply(to="gone@example.com"))
    assert smtp_sink.messages == []


def test_recipient_refused_451_is_transient_and_definitely_not_sent(smtp_sink: SmtpSink) -> None:
    smtp_sink.refuse("busy@example.com", 451)
    with pytest.raises(TransientError, match="451") as caught:
        send(smtp_sink, reply(to="busy@example.com"))
    assert not isinstance(caught.value, smtp.SendInDoubtError)
    assert smtp_sink.messages == []


def test_connection_lost_after_data_is_in_doubt(smtp_sink: SmtpSink) -> None:
    smtp_sink.drop_after_data()
    with pytest.raises(smtp.SendInDoubtError) as caught:
        send(smtp_sink, reply())
    assert caught.value.error_type == "transient"
    # The server did keep it: exactly why the sender must not assume "not sent".
    [received] = smtp_sink.messages
    assert received.dropped_connection


def test_in_doubt_send_is_resolved_through_the_sent_folder(
    smtp_sink: SmtpSink, dovecot: DovecotServer, mail_user: MailUser
) -> None:
    smtp_sink.drop_after_data()
    with pytest.raises(smtp.SendInDoubtError):
        send(smtp_sink, reply())
    # Providers such as Gmail and Microsoft 365 file what they relay in the Sent folder.
    dovecot.append(mail_user.name, smtp_sink.messages[0].data, folder="Sent", flags=["\\Seen"])

    with imap.open_mailbox(
        dovecot.host, dovecot.imaps_port, "ssl", mail_user.name, mail_user.password,
        timeout_seconds=TIMEOUT, ca_file=str(dovecot.ca.ca_file),
    ) as client:
        folder = imap.sent_folder(client)
        assert folder is not None
        assert imap.find_message_id(client, folder, f"<reply-{JOB_ID}@shop.test>")
        assert not imap.find_message_id(client, folder, "<reply-other@shop.test>")


def test_untrusted_certificate_is_rejected(smtp_sink: SmtpSink, tmp_path: Path) -> None:
    stranger = create_test_ca(tmp_path / "other-ca", name="Some Other CA")
    for ca_file in (None, stranger.ca_file):
        with pytest.raises(TransientError, match="certificate verification failed"):
            send(smtp_sink, reply(), ca_file=ca_file)
    assert smtp_sink.messages == []


def test_untrusted_certificate_is_rejected_on_implicit_tls(
    smtp_sink_implicit_tls: SmtpSink,
) -> None:
    with pytest.raises(TransientError, match="certificate verification failed"):
        send(smtp_sink_implicit_tls, reply(), ca_file=None)
    assert smtp_sink_implicit_tls.messages == []


def test_plain_is_refused_for_remote_hosts_before_connecting() -> None:
    with pytest.raises(PermanentError, match="only allowed to loopback"):
        smtp.send_message(
            reply(), "smtp.example.com", 25, "plain", None, None, timeout_seconds=TIMEOUT
        )


class _Recorder:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.count += 1
        return "250 OK"


@pytest.fixture
def server_without_tls() -> Iterator[tuple[int, _Recorder]]:
    """A loopback SMTP server that offers neither STARTTLS nor AUTH."""
    recorder = _Recorder()
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port, server_hostname="localhost")
    controller.start()
    try:
        yield port, recorder
    finally:
        controller.stop()


def test_starttls_never_falls_back_to_plaintext(
    server_without_tls: tuple[int, _Recorder],
) -> None:
    port, recorder = server_without_tls
    with pytest.raises(PermanentError, match="does not offer STARTTLS"):
        smtp.send_message(
            reply(), "127.0.0.1", port, "starttls", "u", "p", timeout_seconds=TIMEOUT
        )
    assert recorder.count == 0


def test_plain_mode_on_loopback_sends(server_without_tls: tuple[int, _Recorder]) -> None:
    port, recorder = server_without_tls
    smtp.send_message(reply(), "127.0.0.1", port, "plain", None, None, timeout_seconds=TIMEOUT)
    assert recorder.count == 1


def test_connection_refused_is_transient() -> None:
    with pytest.raises(TransientError, match="connection failed"):
        smtp.send_message(
            reply(), "127.0.0.1", free_port(), "ssl", "u", "p", timeout_seconds=TIMEOUT
        )


def test_server_that_never_greets_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        with pytest.raises(TransientError, match="timed out"):
            smtp.send_message(reply(), "127.0.0.1", port, "starttls", "u", "p", timeout_seconds=0.5)
