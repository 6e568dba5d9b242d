"""Building the auto-reply to one inbound message: pure, no sockets (worker.smtp sends it).

Subject, threading headers, auto-reply markers and encodings are decided here so they can be
tested without a server, and so every attempt of a job builds the very same message.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime

from worker.errors import PermanentError

SERVICE = "smtp"  # an unusable address is reported against the service that would send it
MAX_REFERENCES = 20  # Message-IDs kept in References: the thread root plus the most recent ones
MAX_SUBJECT_CHARS = 250

# Prefixes mail clients put before a replied subject: Re (en), RES (pt-BR Outlook), AW (de),
# SV (nordic), Antw (nl), with optional counters like "Re[2]:".
_REPLY_PREFIX = re.compile(r"^\s*(?:(?:re|res|aw|sv|antw)\s*(?:\[\d+\])?\s*:\s*)+", re.IGNORECASE)
_MSG_ID = re.compile(r"<[^<>\s]+>")
_ID_HEADERS = frozenset({"message-id", "in-reply-to", "references"})


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
