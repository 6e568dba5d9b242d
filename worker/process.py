"""process-queue: one run of the job runner over every job type this worker handles.

The registry below is the one place a job type is wired to its handler: process_email is
answered by worker.pipeline, send_reply (a reply a person approved in the console) by
worker.console.sending, notify (a store's notification digest) by worker.notify, mailbox_record
(the store's mailbox as the record) by worker.mailbox_record; a new kind of work registers its
handler here (and its retry policy in SQL, public.job_retry_policies). The runner
(worker.queue.runner) claims only the registered types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.config import DEFAULTS, Settings
from worker.console.sending import JOB_TYPE as SEND_REPLY
from worker.console.sending import SendReplyHandler
from worker.mailbox_record import JOB_TYPE as MAILBOX_RECORD
from worker.mailbox_record import MailboxRecordHandler
from worker.notify import JOB_TYPE as NOTIFY
from worker.notify import NotifyHandler, NotifyOptions
from worker.pipeline.context import PipelineOptions, Services
from worker.pipeline.handler import JOB_TYPE, EmailHandler
from worker.queue.handlers import Handlers
from worker.queue.runner import RunnerOptions, run_queue
from worker.runs import Budget


@dataclass(frozen=True)
class ProcessOptions:
    """Tuning for one process run; the defaults are Settings' (tests override single fields)."""

    concurrency: int = DEFAULTS.process_concurrency
    lease_seconds: int = DEFAULTS.lease_seconds
    heartbeat_seconds: float | None = None  # default: a third of the lease
    reply_cap_per_customer: int = DEFAULTS.reply_cap_per_customer
    reply_cap_window_hours: int = DEFAULTS.reply_cap_window_hours
    # None: no hourly rate (the benchmarks answer far more than a store's rate allows).
    store_replies_per_hour: int | None = DEFAULTS.store_replies_per_hour
    max_message_bytes: int = DEFAULTS.max_message_bytes
    min_confidence: float = PipelineOptions.min_confidence
    # The job types the email pipeline answers; tests give theirs a private type so a run
    # claims only its own jobs.
    job_types: tuple[str, ...] = (JOB_TYPE,)
    notify: NotifyOptions = field(default_factory=NotifyOptions)
    # Whether this run files replies in the stores' mailboxes (mailbox_record jobs, decision
    # 0019); tests of other concerns switch it off so a run claims only their own jobs.
    record_mailbox: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> ProcessOptions:
        """Process tuning from Settings."""
        return cls(
            concurrency=settings.process_concurrency,
            lease_seconds=settings.lease_seconds,
            reply_cap_per_customer=settings.reply_cap_per_customer,
            reply_cap_window_hours=settings.reply_cap_window_hours,
            store_replies_per_hour=settings.store_replies_per_hour,
            max_message_bytes=settings.max_message_bytes,
            notify=NotifyOptions(
                console_url=settings.console_url,
                webhook_timeout_seconds=settings.webhook_timeout_seconds,
                webhook_allow_private_hosts=settings.webhook_allow_private_hosts,
            ),
        )

    @property
    def runner(self) -> RunnerOptions:
        return RunnerOptions(self.concurrency, self.lease_seconds, self.heartbeat_seconds)

    @property
    def pipeline(self) -> PipelineOptions:
        return PipelineOptions(
            reply_cap_per_customer=self.reply_cap_per_customer,
            reply_cap_window_hours=self.reply_cap_window_hours,
            store_replies_per_hour=self.store_replies_per_hour,
            max_message_bytes=self.max_message_bytes,
            min_confidence=self.min_confidence,
        )


def handlers_for(services: Services, options: ProcessOptions) -> Handlers:
    """Every job type this worker runs, each with its handler."""
    handlers = Handlers()
    email = EmailHandler(services, options.pipeline)
    for job_type in options.job_types:
        handlers.register(job_type, email)
    # A reply a person approved or wrote in the console (worker/console, docs/api.md).
    handlers.register(SEND_REPLY, SendReplyHandler(services, options.pipeline))
    # A store's notification digest (worker/notify.py; its retry policy is in SQL).
    handlers.register(NOTIFY, NotifyHandler(services, options.notify))
    if options.record_mailbox:
        # The store's mailbox as the record: Sent, Drafts, answered flags (worker/mailbox_record).
        handlers.register(MAILBOX_RECORD, MailboxRecordHandler(services))
    return handlers


def run_process(
    services: Services,
    budget: Budget,
    *,
    options: ProcessOptions | None = None,
    worker_id: str | None = None,
    handlers: Handlers | None = None,
) -> dict[str, Any]:
    """One process-queue run: drain due jobs within the budget; returns the run summary.

    `handlers` replaces the default registry (tests and benchmarks add job types of their own).
    """
    options = options or ProcessOptions()
    return run_queue(
        services.db,
        handlers if handlers is not None else handlers_for(services, options),
        budget,
        options=options.runner,
        worker_id=worker_id,
    )
