"""Typed values at the edges: a store row and a mail account, each built once from the database.

Rows arrive as dicts (both database backends return them so); the code that connects to a mail
server or decides about a store should not re-read and re-convert their keys each time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

TlsMode = Literal["ssl", "starttls", "plain"]


@dataclass(frozen=True)
class MailAccount:
    """One login to a mail server: IMAP or SMTP, as configured for a store."""

    host: str
    port: int
    tls: TlsMode
    user: str
    password: str = field(repr=False)

    @classmethod
    def imap(cls, store: Mapping[str, Any], password: str | None) -> MailAccount:
        """The store row's IMAP mailbox with its password (from Vault)."""
        return cls._build(store, password, "imap")

    @classmethod
    def smtp(cls, store: Mapping[str, Any], password: str | None) -> MailAccount:
        """The store row's SMTP submission server with its password (from Vault)."""
        return cls._build(store, password, "smtp")

    @classmethod
    def _build(cls, store: Mapping[str, Any], password: str | None, kind: str) -> MailAccount:
        return cls(
            host=str(store[f"{kind}_host"]),
            port=int(store[f"{kind}_port"]),
            tls=cast(TlsMode, str(store[f"{kind}_tls"])),
            user=str(store.get(f"{kind}_user") or ""),
            password=password or "",
        )


@dataclass(frozen=True)
class Store:
    """A `stores` row as the worker reads it (secrets stay in Vault, never here)."""

    id: str
    name: str
    support_email: str
    extra_addresses: tuple[str, ...]
    active: bool
    reply_mode: str
    shopify_domain: str | None
    imap_folder: str
    row: Mapping[str, Any] = field(repr=False, compare=False)  # for readers that take the row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Store:
        """Build from a row of public.stores; missing defaulted columns get the table default."""
        return cls(
            id=str(row["id"]),
            name=str(row.get("name") or ""),
            support_email=str(row.get("support_email") or ""),
            extra_addresses=tuple(str(a) for a in row.get("extra_addresses") or ()),
            active=row.get("active") is not False,
            reply_mode=str(row.get("reply_mode") or "auto_send"),
            shopify_domain=row.get("shopify_domain") or None,
            imap_folder=str(row.get("imap_folder") or "INBOX"),
            row=row,
        )

    def imap_account(self, secrets: Mapping[str, Any]) -> MailAccount:
        """The store's IMAP login (secrets as get_store_secrets returns them)."""
        return MailAccount.imap(self.row, secrets.get("imap_password"))

    def smtp_account(self, secrets: Mapping[str, Any]) -> MailAccount:
        """The store's SMTP login (secrets as get_store_secrets returns them)."""
        return MailAccount.smtp(self.row, secrets.get("smtp_password"))


SENT_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class MailboxSettings:
    """A store's mailbox settings, the `mailbox_*` columns of public.stores (decision 0019)."""

    sent: str = "auto"  # auto | always | never
    drafts: bool = True
    mark_answered: bool = True
    sent_folder: str | None = None  # None: SPECIAL-USE \Sent
    drafts_folder: str | None = None  # None: SPECIAL-USE \Drafts

    @classmethod
    def from_store(cls, store: Mapping[str, Any]) -> MailboxSettings:
        """From a stores row; a missing column takes the table's default."""
        sent = str(store.get("mailbox_sent") or "auto")
        return cls(
            sent=sent if sent in SENT_MODES else "auto",
            drafts=store.get("mailbox_drafts") is not False,
            mark_answered=store.get("mailbox_mark_answered") is not False,
            sent_folder=store.get("mailbox_sent_folder") or None,
            drafts_folder=store.get("mailbox_drafts_folder") or None,
        )
