"""Wiring: the real clients built once from Settings, and the runs that use them.

Everything here is construction; the behaviour lives in fetch.py, process.py and the queue and
pipeline packages, which take these pieces as arguments so tests and benchmarks can pass their
own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import httpx
from imapclient import IMAPClient

from worker import db as dbmod
from worker import fetch, fetch_jobs, imap, process, smtp
from worker.claude import ClaudeResponder
from worker.config import Settings
from worker.models import MailAccount
from worker.offline import OfflineResponder
from worker.pipeline.context import MailIO, Services
from worker.queue.lanes import Lane, run_lanes
from worker.queue.runner import Slots
from worker.responder import Responder
from worker.runs import Budget, Runner
from worker.shopify import ShopifyClient

log = logging.getLogger(__name__)


def build_responder(settings: Settings) -> Responder:
    """Claude when a key is configured, else the deterministic offline responder."""
    if settings.anthropic_api_key:
        return ClaudeResponder(
            settings.anthropic_api_key,
            model=settings.claude_model,
            base_url=settings.anthropic_base_url,
            timeout_seconds=settings.claude_timeout_seconds,
        )
    log.warning("ANTHROPIC_API_KEY is not set: replies come from the offline responder")
    return OfflineResponder()


def mail_io(settings: Settings) -> MailIO:
    """SMTP delivery, the lookup of a sent reply (Sent folder, then the copy in INBOX) and the
    IMAP login of the mailbox_record job, with the configured timeouts and CA."""

    def send(message: EmailMessage, account: MailAccount, copy_to: str | None) -> object:
        return smtp.send_message(
            message,
            account.host,
            account.port,
            account.tls,
            account.user,
            account.password,
            timeout_seconds=settings.smtp_timeout_seconds,
            ca_file=settings.extra_ca_file,
            copy_to=copy_to,
        )

    def open_imap(account: MailAccount) -> IMAPClient:
        return imap.open_mailbox(
            account.host,
            account.port,
            account.tls,
            account.user,
            account.password,
            timeout_seconds=settings.imap_timeout_seconds,
            ca_file=settings.extra_ca_file,
        )

    def find_sent(account: MailAccount, message_id: str, inbox: str) -> str | None:
        with open_imap(account) as client:
            folder = imap.sent_folder(client)
            if folder is not None and imap.find_message_id(client, folder, message_id):
                return "sent_folder"
            # The reply's own copy (an extra envelope recipient) may already be in the inbox.
            if imap.find_message_id(client, inbox, message_id):
                return "inbox"
            return None

    return MailIO(send=send, find_sent=find_sent, open_imap=open_imap)


@dataclass
class WorkerServices:
    """What the app and the CLI run with: settings, database, and the two runners."""

    settings: Settings
    db: dbmod.Database
    process_services: Services
    http: httpx.Client
    runners: dict[str, Runner] = field(default_factory=dict)

    def close(self) -> None:
        """Release pools and sockets."""
        close = getattr(self.process_services.responder, "close", None)
        if callable(close):
            close()
        self.http.close()
        self.db.close()


def fetch_options(settings: Settings) -> fetch.FetchOptions:
    """Fetch tuning from Settings."""
    return fetch.FetchOptions.from_settings(settings)


def process_options(settings: Settings) -> process.ProcessOptions:
    """Process tuning from Settings."""
    return process.ProcessOptions.from_settings(settings)


def build_services(settings: Settings, *, database: dbmod.Database | None = None) -> WorkerServices:
    """The real services for `settings` (a database may be passed in by tests)."""
    database = database or dbmod.connect(settings)
    # One pooled HTTP client for every shop: connections are reused across jobs and stores.
    http = httpx.Client(timeout=httpx.Timeout(15.0, connect=5.0))

    def shop_for(store: Mapping[str, Any], secrets: Mapping[str, Any]) -> ShopifyClient | None:
        token = secrets.get("shopify_token")
        if not store.get("shopify_domain") or not token:
            return None
        return ShopifyClient(
            http,
            str(store["shopify_domain"]),
            str(token),
            settings.shopify_api_version,
            base_url=settings.shopify_base_url,
        )

    process_services = Services(
        db=database,
        responder=build_responder(settings),
        mail=mail_io(settings),
        shop_for=shop_for,
    )
    services = WorkerServices(settings, database, process_services, http)
    f_opts, p_opts = fetch_options(settings), process_options(settings)

    # Mailboxes read at once by this process, whichever run claimed their jobs.
    mailbox_slots = Slots(settings.fetch_concurrency)

    def run_fetch(budget: Budget) -> Mapping[str, Any]:
        return fetch_jobs.run_fetch(database, budget, options=f_opts, slots=mailbox_slots)

    def run_process(budget: Budget) -> Mapping[str, Any]:
        # Emails and mailboxes in lanes of their own slots, so neither starves the other; every
        # machine's process run reads the mailboxes whose fetch jobs are due (decision 0021).
        email = Lane("email", process.handlers_for(process_services, p_opts), p_opts.runner)
        mailboxes = fetch_jobs.fetch_lane(database, f_opts, budget, slots=mailbox_slots)
        lanes = [email] if mailboxes is None else [email, mailboxes]
        return run_lanes(database, lanes, budget)

    services.runners = {"fetch": run_fetch, "process": run_process}
    return services
