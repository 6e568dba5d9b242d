"""The SMTP edge: building a threaded auto-reply (pure) and sending it with smtplib.

Certificates are always verified (the system store plus EXTRA_CA_FILE) and every failure leaves
this module as a worker.errors type. The send is split into SMTP phases so a failure after the
message body went out is reported as in doubt rather than as "not sent".
"""

from __future__ import annotations

import copy
import re
import smtplib
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime, getaddresses

from worker.errors import (
    PermanentError,
    TransientError,
    WorkerError,
    classify_network_error,
    classify_smtp_code,
)
from worker.tls import client_ssl_context, require_tls_mode

SERVICE = "smtp"
MAX_REFERENCES = 20  # Message-IDs kept in References: the thread root plus the most recent ones
MAX_SUBJECT_CHARS = 250

# Prefixes mail clients put before a replied subject: Re (en), RES (pt-BR Outlook), AW (de),
# SV (nordic), Antw (nl), with optional counters like "Re[2]:".
_REPLY_PREFIX = re.compile(r"^\s*(?:(?:re|res|aw|sv|antw)\s*(?:\[\d+\])?\s*:\s*)+", re.IGNORECASE)
_MSG_ID = re.compile(r"<[^<>\s]+>")
_ID_HEADERS = frozenset({"message-id", "in-reply-to", "references"})


class SendInDoubtError(TransientError):
    """The connection failed after the message body was sent: it may have been delivered."""


@dataclass(frozen=True)
class SendResult:
    """What the server said when it accepted the message."""

    message_id: str | None
    recipients: tuple[str, ...]
    response: str


class _ReplyPolicy(EmailPolicy):
    """The default email policy, except that Message-ID headers are folded between IDs only.

    The stock policy RFC 2047-encodes an In-Reply-To or References word longer than a line,
    which breaks threading in every mail client; IDs are ASCII and must stay verbatim.
    """

    def fold(self, name: str, value: str) -> str:
        if name.lower() in _ID_HEADERS:
            return _fold_ids(name, str(value), self.linesep, self.max_line_length or 78)
        return super().fold(name, value)

    def fold_binary(self, name: str, value: str) -> bytes:
        if name.lower() in _ID_HEADERS:
            folded = _fold_ids(name, str(value), self.linesep, self.max_line_length or 78)
            return folded.encode("ascii", "replace")
        return super().fold_binary(name, value)


REPLY_POLICY = _ReplyPolicy()


def _fold_ids(name: str, value: str, linesep: str, width: int) -> str:
    line = f"{name}:"
    lines = []
    for token in value.split():
        if len(line) + 1 + len(token) > width and line != f"{name}:":
            lines.append(line)
            line = ""
        line += " " + token
    lines.append(line)
    return linesep.join(lines) + linesep


# -- pure: building the reply ------------------------------------------------------------------


def reply_subject(original_subject: str | None) -> str:
    """'Re: ' plus the original subject without its own reply prefixes (never 'Re: Re:')."""
    subject = _single_line(original_subject or "")
    subject = _REPLY_PREFIX.sub("", subject).strip()
    return f"Re: {subject}"[:MAX_SUBJECT_CHARS].rstrip()


def message_ids(values: Sequence[str | None]) -> list[str]:
    """The well-formed <id> tokens of values, in order, each once."""
    seen: list[str] = []
    for value in values:
        for found in _MSG_ID.findall(value or ""):
            if found not in seen and found.isascii():
                seen.append(found)
    return seen


def thread_references(references: Sequence[str], in_reply_to: str | None) -> list[str]:
    """References for a reply (RFC 5322 3.6.4): the original's plus its Message-ID, bounded.

    Long threads keep the root and the most recent IDs, as mail clients do.
    """
    ids = message_ids([*references, in_reply_to])
    if len(ids) > MAX_REFERENCES:
        ids = [ids[0], *ids[-(MAX_REFERENCES - 1) :]]
    return ids


def reply_message_id(job_id: str, domain: str) -> str:
    """The Message-ID of the reply to a job: the same for every attempt, so a retry resends the
    same message instead of a second one."""
    host = domain.rsplit("@", 1)[-1].strip().strip(".").lower()
    if not host or any(c in host for c in "<>[] \t\r\n"):
        raise ValueError(f"not a usable domain: {domain!r}")
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    return f"<reply-{uuid.UUID(str(job_id))}@{host}>"


def build_reply(
    *,
    from_address: str,
    from_name: str | None,
    to_address: str,
    original_subject: str | None,
    in_reply_to: str | None,
    references: Sequence[str],
    body_text: str,
    message_id: str,
    date: datetime | None = None,
) -> EmailMessage:
    """The auto-reply to one inbound message, threaded under it and marked auto-submitted."""
    message = EmailMessage(policy=REPLY_POLICY)
    try:
        name = _single_line(from_name or "")
        message["From"] = Address(display_name=name, addr_spec=from_address)
        message["To"] = Address(addr_spec=to_address)
    except (ValueError, IndexError, HeaderParseError) as exc:
        raise PermanentError(f"unusable address: {exc}", service=SERVICE) from exc
    message["Subject"] = reply_subject(original_subject)
    when = date or datetime.now(UTC)
    message["Date"] = format_datetime(when if when.tzinfo else when.replace(tzinfo=UTC))
    ids = message_ids([message_id])
    if len(ids) != 1:
        raise ValueError(f"not a Message-ID: {message_id!r}")
    message["Message-ID"] = ids[0]
    parent = message_ids([in_reply_to])
    if parent:
        message["In-Reply-To"] = parent[0]
    thread = thread_references(references, parent[0] if parent else None)
    if thread:
        message["References"] = " ".join(thread)
    # RFC 3834: lets other responders (and ours) recognise this as automatic and stay quiet.
    message["Auto-Submitted"] = "auto-replied"
    # Stops Exchange/Outlook out-of-office and delivery receipts from answering the answer.
    message["X-Auto-Response-Suppress"] = "All"
    text = body_text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    # Quoted-printable keeps the message 7-bit clean for servers without 8BITMIME.
    message.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    return message


def _single_line(value: str) -> str:
    """Header text from untrusted input: no line breaks (header injection), spaces collapsed."""
    return " ".join(value.split())


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
) -> SendResult:
    """Send over SMTP with TLS ('ssl' or 'starttls'; 'plain' only to loopback) and AUTH.

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
        return _transfer(conn, sender, recipients, data, message.get("Message-ID"))


def _transfer(
    conn: smtplib.SMTP, sender: str, recipients: list[str], data: bytes, message_id: str | None
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
        message_id=message_id, recipients=tuple(accepted), response=f"{code} {_text(reply)}"
    )


def _quit_quietly(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (OSError, smtplib.SMTPException):
        conn.close()
