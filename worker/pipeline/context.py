"""What one email job carries from step to step, and the services it talks to."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol, TypeVar

from worker.config import DEFAULTS
from worker.db import Database
from worker.mime import ParsedEmail
from worker.models import MailAccount
from worker.queue.breakers import Breakers
from worker.queue.handlers import JobRun
from worker.queue.trace import JobTrace
from worker.responder import (
    Classification,
    Draft,
    EmailFacts,
    KnowledgeEntry,
    OrderFacts,
    ProductFacts,
    Responder,
    ThreadMessage,
)

SECRETS_TTL_SECONDS = 60.0  # a run re-reads a store's secrets at most this often

T = TypeVar("T")


class OrderLookup(Protocol):
    """What the pipeline asks of a shop (worker.shopify.ShopifyClient): the sender's orders and
    the public catalogue."""

    def recent_orders_for_email(self, email: str, limit: int = 5) -> list[OrderFacts]: ...
    def order_by_number(self, number: str) -> OrderFacts | None: ...
    def search_products(self, search: str, limit: int = 5) -> list[ProductFacts]: ...


@dataclass(frozen=True)
class MailIO:
    """The store-facing mail edges: SMTP delivery and the lookup of a sent reply's trace."""

    # (message, SMTP account, copy_to: the store's own address as an extra envelope recipient)
    send: Callable[[EmailMessage, MailAccount, str | None], object]
    # (IMAP account, Message-ID, the folder fetch reads) -> where the reply was found
    # ('sent_folder', 'inbox': its own copy) or None
    find_sent: Callable[[MailAccount, str, str], str | None]
    # (IMAP account) -> a logged-in IMAPClient as a context manager, for the mailbox_record job
    # (worker/mailbox_record.py); None where a run files nothing in the store's mailbox.
    open_imap: Callable[[MailAccount], AbstractContextManager[Any]] | None = None


@dataclass
class Services:
    """Everything a job talks to, passed in so tests and the benchmark can swap any of it."""

    db: Database
    responder: Responder
    mail: MailIO
    shop_for: Callable[[Mapping[str, Any], Mapping[str, Any]], OrderLookup | None]
    breakers: Breakers = field(init=False)
    _secrets: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    _secrets_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.breakers = Breakers(self.db)

    def secrets(self, store_id: str) -> dict[str, Any]:
        """The store's credentials, cached briefly so a busy store costs one Vault read a minute."""
        now = time.monotonic()
        with self._secrets_lock:
            cached = self._secrets.get(store_id)
            if cached and now - cached[0] < SECRETS_TTL_SECONDS:
                return cached[1]
        value = self.db.get_store_secrets(store_id)
        with self._secrets_lock:
            self._secrets[store_id] = (now, value)
        return value


@dataclass(frozen=True)
class PipelineOptions:
    """The pipeline's limits; the defaults are Settings'."""

    reply_cap_per_customer: int = DEFAULTS.reply_cap_per_customer
    reply_cap_window_hours: int = DEFAULTS.reply_cap_window_hours
    store_replies_per_hour: int | None = DEFAULTS.store_replies_per_hour
    max_message_bytes: int = DEFAULTS.max_message_bytes
    min_confidence: float = 0.6  # not a setting: below it a reply waits for a person


class JobDone(Exception):
    """Ends a job early with an outcome (skipped, spam, held ...); it is completed."""

    def __init__(self, outcome: str, **detail: Any) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.detail = detail


def _need(value: T | None, what: str) -> T:
    if value is None:
        raise RuntimeError(f"pipeline step order: {what} is not known yet")
    return value


@dataclass
class JobContext:
    """One email job as it moves through the steps; each step reads and fills some fields.

    A step ends the job by raising JobDone (the runner completes it with that outcome) or by
    setting `settled` (delivery's finish_send completed it in the same transaction as the send).
    A field ending in `_` is filled by a step; later steps read it through the property of the
    same name, which fails loudly when the step that fills it has not run.
    """

    run: JobRun
    services: Services
    options: PipelineOptions
    loaded: Mapping[str, Any] = field(default_factory=dict)  # load_job_context's answer
    message_: Mapping[str, Any] | None = None
    store_: Mapping[str, Any] | None = None
    email_: ParsedEmail | None = None
    facts_: EmailFacts | None = None
    classification_: Classification | None = None
    order_numbers: list[str] = field(default_factory=list)  # mentioned in the email's text
    to_address: str = ""
    unauthenticated: str | None = None  # why the receiving server failed the sender, if it did
    orders: list[OrderFacts] = field(default_factory=list)
    # The rest of the reply context (worker.responder.ReplyContext), filled by the steps that
    # find them; empty parts never reach the prompt.
    thread: list[ThreadMessage] = field(default_factory=list)
    knowledge: list[KnowledgeEntry] = field(default_factory=list)
    products: list[ProductFacts] = field(default_factory=list)
    credit: str | None = None
    draft_: Draft | None = None
    hold: str | None = None
    reply: Mapping[str, Any] | None = None
    settled: dict[str, Any] | None = None

    @property
    def job(self) -> Mapping[str, Any]:
        return self.run.job

    @property
    def job_id(self) -> str:
        return self.run.job_id

    @property
    def trace(self) -> JobTrace:
        return self.run.trace

    @property
    def db(self) -> Database:
        return self.services.db

    @property
    def message(self) -> Mapping[str, Any]:
        return _need(self.message_, "the message")

    @property
    def store(self) -> Mapping[str, Any]:
        return _need(self.store_, "the store")

    @property
    def email(self) -> ParsedEmail:
        return _need(self.email_, "the parsed email")

    @property
    def facts(self) -> EmailFacts:
        return _need(self.facts_, "the email facts")

    @property
    def classification(self) -> Classification:
        return _need(self.classification_, "the classification")

    @property
    def draft(self) -> Draft:
        return _need(self.draft_, "the draft")
