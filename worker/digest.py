"""A store's notification digest: the email and the webhook body, built from the items the
`notify` job took (take_notification_digest). Pure, no sockets.

What a digest may carry: the store's own items only (the SQL took them by store), with the
customer's address, the subject and why a person is needed; never an email body or a draft,
because a digest goes to a chat channel and to inboxes outside the console's access control.
Links point at the console, where a signed-in person of the store sees the rest.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from worker.compose import REPLY_POLICY

# (kind, heading) in the order a digest lists them: what blocks all mail first.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("credentials_failed", "A connection of the store is failing"),
    ("waiting_for_credits", "Emails waiting for credits"),
    ("credits_low", "Credits running low"),
    ("held_reply", "Replies waiting for a person"),
    ("dead_letter", "Jobs that gave up (dead-letter queue)"),
)
_SERVICE_NAMES = {
    "imap": "the mailbox (IMAP)",
    "smtp": "sending mail (SMTP)",
    "shopify": "Shopify",
}
MAX_LINE_CHARS = 200  # a field of an item (subject, error) is cut here


@dataclass(frozen=True)
class Item:
    """One notification as a digest shows it."""

    kind: str
    ref: str
    detail: Mapping[str, Any]
    created_at: str


@dataclass(frozen=True)
class Digest:
    """The items of one store's digest, and where its links point."""

    job_id: str
    store_id: str
    store_name: str
    support_email: str
    items: tuple[Item, ...]
    console_url: str | None  # the console's base URL (CONSOLE_URL); None: no links

    @classmethod
    def from_taken(cls, taken: Mapping[str, Any], console_url: str | None) -> Digest:
        """The digest of take_notification_digest's answer."""
        store = taken["store"]
        items = tuple(
            Item(
                kind=str(i["kind"]),
                ref=str(i["ref"]),
                detail=dict(i.get("detail") or {}),
                created_at=str(i.get("created_at") or ""),
            )
            for i in taken.get("items") or []
        )
        return cls(
            job_id=str(taken["digest"]["job_id"]),
            store_id=str(store["id"]),
            store_name=str(store.get("name") or ""),
            support_email=str(store.get("support_email") or ""),
            items=items,
            console_url=console_url.rstrip("/") if console_url else None,
        )

    def of_kind(self, kind: str) -> list[Item]:
        return [i for i in self.items if i.kind == kind]

    def link(self, path: str) -> str | None:
        return f"{self.console_url}{path}" if self.console_url else None


def _cut(value: object) -> str:
    text = " ".join(str(value or "").split())
    return text if len(text) <= MAX_LINE_CHARS else text[: MAX_LINE_CHARS - 1] + "…"


def item_line(item: Item) -> str:
    """One line saying what needs a person."""
    d = item.detail
    if item.kind == "held_reply":
        reason = f" ({_cut(d['hold_reason'])})" if d.get("hold_reason") else ""
        return f"{_cut(d.get('subject')) or '(no subject)'} - {_cut(d.get('customer'))}{reason}"
    if item.kind == "dead_letter":
        about = (
            f"{_cut(d.get('subject'))} - {_cut(d.get('customer'))}: " if d.get("subject") else ""
        )
        return f"{about}{_cut(d.get('job_type'))} gave up: {_cut(d.get('error'))}"
    if item.kind == "credentials_failed":
        service = _SERVICE_NAMES.get(str(d.get("service") or ""), _cut(d.get("service")))
        error = f": {_cut(d['error'])}" if d.get("error") else ""
        return (
            f"{service} keeps failing ({d.get('consecutive_failures', '?')} failures in a row); "
            f"its work waits until it works again{error}"
        )
    if item.kind == "credits_low":
        threshold = f" (warning below {d['threshold']})" if d.get("threshold") is not None else ""
        return f"{d.get('credits', '?')} credits left{threshold}"
    if item.kind == "waiting_for_credits":
        # One item per episode without credits (the credit logic's ref): the count is the one
        # when the episode began.
        waiting = d.get("waiting")
        what = f"{waiting} email(s) waiting" if waiting else "emails are waiting"
        balance = f" (balance {d['credits']})" if d.get("credits") is not None else ""
        return (
            f"{what} for credits{balance}; they are answered automatically once credits are added"
        )
    return _cut(d)


def item_link(digest: Digest, item: Item) -> str | None:
    """Where in the console a person deals with the item."""
    conversation = item.detail.get("conversation_id")
    if item.kind == "held_reply" and conversation:
        return digest.link(f"/console/conversations/{conversation}")
    if item.kind == "dead_letter":
        return digest.link("/console/dead-letters")
    if item.kind == "credentials_failed":
        return digest.link("/console/health")
    if conversation:
        return digest.link(f"/console/conversations/{conversation}")
    return digest.link("/console/stores")


_COUNTED = {
    "credentials_failed": ("failing connection", "failing connections"),
    "held_reply": ("reply waiting", "replies waiting"),
    "dead_letter": ("dead letter", "dead letters"),
}


def subject(digest: Digest) -> str:
    """'[Store] 3 things need a person: 2 replies waiting, 1 dead letter'."""
    counts = []
    for kind, _ in SECTIONS:
        n = len(digest.of_kind(kind))
        if not n:
            continue
        if kind == "credits_low":
            counts.append("credits low")
        elif kind == "waiting_for_credits":
            counts.append("emails waiting for credits")
        else:
            one, many = _COUNTED[kind]
            counts.append(f"{n} {one if n == 1 else many}")
    total = len(digest.items)
    things = "thing needs" if total == 1 else "things need"
    name = " ".join(digest.store_name.split()) or digest.support_email
    return f"[{name}] {total} {things} a person: {', '.join(counts)}"


def text(digest: Digest) -> str:
    """The digest as plain text, one section per kind."""
    name = " ".join(digest.store_name.split()) or digest.support_email
    lines = [f"{name} <{digest.support_email}>: {len(digest.items)} to look at.", ""]
    for kind, heading in SECTIONS:
        items = digest.of_kind(kind)
        if not items:
            continue
        lines.append(f"{heading} ({len(items)})")
        for item in items:
            lines.append(f"- {item_line(item)}")
            link = item_link(digest, item)
            if link:
                lines.append(f"  {link}")
        lines.append("")
    console = digest.link("/console")
    if console:
        lines.append(f"Support console: {console}")
    lines += [
        "",
        "-- ",
        "Sent by the support worker. Email bodies are not included; open the console to read "
        "them. The store's owners choose who gets these and how often (console: Stores).",
    ]
    return "\n".join(lines) + "\n"


def message_id(digest: Digest) -> str:
    """The digest's Message-ID: the same for every attempt of its job."""
    host = digest.support_email.rpartition("@")[2].strip().lower() or "localhost"
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    return f"<notify-{uuid.UUID(digest.job_id)}@{host}>"


def build_email(
    digest: Digest, recipients: Sequence[str], *, date: datetime | None = None
) -> EmailMessage:
    """The digest email from the store's support address to its notification recipients.

    Marked Auto-Submitted: auto-generated (RFC 3834) so no responder answers it, ours included
    (worker.loops) when it lands in the store's own mailbox; Precedence and
    X-Auto-Response-Suppress keep out-of-office replies away.
    """
    message = EmailMessage(policy=REPLY_POLICY)
    name = " ".join(digest.store_name.split())
    message["From"] = Address(
        display_name=f"{name} (support worker)", addr_spec=digest.support_email
    )
    message["To"] = ", ".join(str(Address(addr_spec=r)) for r in recipients)
    message["Subject"] = subject(digest)
    when = date or datetime.now(UTC)
    message["Date"] = format_datetime(when)
    message["Message-ID"] = message_id(digest)
    message["Auto-Submitted"] = "auto-generated"
    message["Precedence"] = "bulk"
    message["X-Auto-Response-Suppress"] = "All"
    message.set_content(text(digest), subtype="plain", charset="utf-8", cte="quoted-printable")
    return message


def webhook_body(digest: Digest) -> dict[str, Any]:
    """A Slack incoming-webhook message (`text`, with mrkdwn links), also readable by any
    receiver that takes JSON. The same item lines as the email: no bodies."""
    lines = [f"*{subject(digest)}*"]
    for kind, heading in SECTIONS:
        items = digest.of_kind(kind)
        if not items:
            continue
        lines.append(f"_{heading}_")
        for item in items:
            link = item_link(digest, item)
            line = _slack_escape(item_line(item))
            lines.append(f"• {line} <{link}|open>" if link else f"• {line}")
    return {
        "text": "\n".join(lines),
        "store_id": digest.store_id,
        "items": [{"kind": i.kind, "ref": i.ref} for i in digest.items],
    }


def _slack_escape(value: str) -> str:
    # Slack's three control characters in message text.
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
