"""The SMTP edge: sending a message with smtplib (the reply itself is built in worker.compose).

Certificates are always verified (the system store plus EXTRA_CA_FILE) and every failure leaves
this module as a worker.errors type. The send is split into SMTP phases so a failure after the
message body went out is reported as in doubt rather than as "not sent".
"""

from __future__ import annotations

import copy
import re
import smtplib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import getaddresses

from worker.errors import (
    PermanentError,
    TransientError,
    WorkerError,
    classify_network_error,
    classify_smtp_code,
)
from worker.tls import client_ssl_context, require_tls_mode

SERVICE = "smtp"


class SendInDoubtError(TransientError):
    """The connection failed after the message body was sent: it may have been delivered."""


@dataclass(frozen=True)
class SendResult:
    """What the server said when it accepted the message."""

    message_id: str | None
    recipients: tuple[str, ...]
    response: str
    # The trace copy's envelope recipient, and the server's answer when it refused it (the
    # customer's delivery went ahead without the copy).
    copy_to: str | None = None
    copy_refused: str | None = None


def message_bytes(message: EmailMessage) -> bytes:
    """The message as sent on the wire: CRLF line ends, Bcc removed."""
    if "Bcc" in message:
        message = copy.deepcopy(message)
        del message["Bcc"]
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


def dot_stuff(data: bytes) -> bytes:
    """The DATA payload: leading dots doubled, CRLF-terminated, ending with the lone dot."""
    stuffed = re.sub(rb"(?m)^\.", b"..", data)
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def envelope(message: EmailMessage) -> tuple[str, list[str]]:
    """(MAIL FROM, RCPT TO list) from the Sender/From and To/Cc/Bcc headers."""
    senders = getaddresses(message.get_all("Sender", []) or message.get_all("From", []))
    sender = senders[0][1] if senders else ""
    recipients = []
    for _, address in getaddresses(
        [*message.get_all("To", []), *message.get_all("Cc", []), *message.get_all("Bcc", [])]
    ):
        if address and address not in recipients:
            recipients.append(address)
    if not sender or not recipients:
        raise PermanentError("the message has no sender or no recipient", service=SERVICE)
    return sender, recipients


def classify_smtp_failure(exc: BaseException, action: str) -> WorkerError:
    """The typed error for a failure while doing `action` (connect, login, mail, rcpt, data)."""
    if isinstance(exc, WorkerError):
        return exc
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        # One recipient that may be accepted later is worth the retry.
        code = min(codes) if codes else 550
        details = "; ".join(f"{rcpt}: {c} {_text(m)}" for rcpt, (c, m) in exc.recipients.items())
        return _with_action(classify_smtp_code(code, details, SERVICE), "recipient refused")
    if isinstance(exc, smtplib.SMTPResponseException):
        # A code of -1 (no reply at all) comes out transient, like any 4xx.
        error = classify_smtp_code(exc.smtp_code, _text(exc.smtp_error), SERVICE)
        return _with_action(error, action)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return PermanentError(f"{action}: {exc}", service=SERVICE)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return TransientError(f"{action}: connection lost: {exc}", service=SERVICE)
    if isinstance(exc, smtplib.SMTPException):
        # e.g. "No suitable authentication method found": the server's set-up, not a blip.
        # (SMTPException subclasses OSError, so this must come before the OSError cases.)
        return PermanentError(f"{action}: {exc}", service=SERVICE)
    network = classify_network_error(exc, action, SERVICE)
    if network is not None:
        return network
    raise TypeError(f"not an SMTP failure: {exc!r}")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _with_action(error: WorkerError, action: str) -> WorkerError:
    error.message = f"{action}: {error.message}"
    error.args = (error.message,)
    return error


@contextmanager
def _smtp_errors(action: str) -> Iterator[None]:
    try:
        yield
    except (OSError, smtplib.SMTPException) as exc:
        raise classify_smtp_failure(exc, action) from exc


# -- I/O ----------------------------------------------------------------------------------------


@contextmanager
def connect(
    host: str,
    port: int,
    tls: str,
    *,
    helo: str,
    timeout_seconds: float,
    ca_file: str | None = None,
) -> Iterator[smtplib.SMTP]:
    """An SMTP session after EHLO, over TLS ('ssl' or 'starttls'; 'plain' only to loopback);
    QUIT on exit. Raises a worker.errors type."""
    require_tls_mode(tls, host, SERVICE)
    context = client_ssl_context(ca_file)
    conn: smtplib.SMTP | None = None
    try:
        with _smtp_errors("connect"):
            # An explicit local_hostname: smtplib's default asks DNS for our FQDN, which can hang.
            if tls == "ssl":
                conn = smtplib.SMTP_SSL(
                    host, port, local_hostname=helo, timeout=timeout_seconds, context=context
                )
            else:
                conn = smtplib.SMTP(host, port, local_hostname=helo, timeout=timeout_seconds)
            conn.ehlo()
        if tls == "starttls":
            with _smtp_errors("starttls"):
                if not conn.has_extn("starttls"):
                    # Never fall back to plaintext when TLS was asked for.
                    raise PermanentError("server does not offer STARTTLS", service=SERVICE)
                conn.starttls(context=context)
                conn.ehlo()
        yield conn
    finally:
        if conn is not None:
            _quit_quietly(conn)


def login(conn: smtplib.SMTP, username: str, password: str) -> str:
    """AUTH on an open session; returns the server's answer. Raises a worker.errors type."""
    with _smtp_errors("login"):
        code, answer = conn.login(username, password)
    return f"{code} {_text(answer)}".strip()


def send_message(
    message: EmailMessage,
    host: str,
    port: int,
    tls: str,
    username: str | None,
    password: str | None,
    *,
    timeout_seconds: float,
    ca_file: str | None = None,
    copy_to: str | None = None,
) -> SendResult:
    """Send over SMTP with TLS ('ssl' or 'starttls'; 'plain' only to loopback) and AUTH.

    copy_to is an extra envelope recipient only (never in the headers, so the customer sees
    nothing): the store's own mailbox gets the same message in the same transaction, a trace of
    delivery that survives a crash. Its refusal is not fatal; it is reported in the result.
    Raises SendInDoubtError when the connection fails after the body went out.
    """
    # Checked before the message is built, so a bad setting is reported as such.
    require_tls_mode(tls, host, SERVICE)
    sender, recipients = envelope(message)
    data = dot_stuff(message_bytes(message))
    helo = sender.rsplit("@", 1)[-1] or "localhost"
    with connect(
        host, port, tls, helo=helo, timeout_seconds=timeout_seconds, ca_file=ca_file
    ) as conn:
        if username:
            login(conn, username, password or "")
        return _transfer(
            conn, sender, recipients, data, message.get("Message-ID"), copy_to=copy_to or None
        )


def _transfer(
    conn: smtplib.SMTP,
    sender: str,
    recipients: list[str],
    data: bytes,
    message_id: str | None,
    *,
    copy_to: str | None = None,
) -> SendResult:
    with _smtp_errors("mail"):
        code, reply = conn.mail(sender)
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, reply, sender)
    refused: dict[str, tuple[int, bytes]] = {}
    accepted = []
    with _smtp_errors("rcpt"):
        for rcpt in recipients:
            code, reply = conn.rcpt(rcpt)
            if code in (250, 251):
                accepted.append(rcpt)
            else:
                refused[rcpt] = (code, reply)
        if not accepted:
            conn.rset()
            raise smtplib.SMTPRecipientsRefused(refused)
        copy_refused = None
        if copy_to and copy_to.lower() not in (r.lower() for r in recipients):
            # After the customer's recipients, so a refusal here never changes their outcome.
            code, reply = conn.rcpt(copy_to)
            if code not in (250, 251):
                copy_refused = f"{code} {_text(reply)}".strip()
    with _smtp_errors("data"):
        code, reply = conn.docmd("DATA")
        if code != 354:
            raise smtplib.SMTPDataError(code, reply)
    # From here on the server may have the message: a lost answer is not a "not sent".
    try:
        conn.send(data)
        code, reply = conn.getreply()
    except (OSError, smtplib.SMTPException) as exc:
        cause = classify_smtp_failure(exc, "data")
        raise SendInDoubtError(
            f"the message may have been delivered: {cause.message}", service=SERVICE
        ) from exc
    if code != 250:
        with _smtp_errors("data"):
            raise smtplib.SMTPDataError(code, reply)
    return SendResult(
        message_id=message_id,
        recipients=tuple(accepted),
        response=f"{code} {_text(reply)}",
        copy_to=copy_to if copy_to and copy_refused is None else None,
        copy_refused=copy_refused,
    )


def _quit_quietly(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (OSError, smtplib.SMTPException):
        conn.close()
