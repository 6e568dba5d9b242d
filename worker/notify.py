"""The `notify` job: one digest of a store's notifications, by email and, when the store set one,
by webhook.

The SQL decides what a digest holds (take_notification_digest: the store's pending items, each in
exactly one digest) and when it runs (notify_people: a short wait to gather a burst, then at
most one digest per interval). This handler only delivers it:

- email over the store's own SMTP to its notification addresses (worker.digest.build_email:
  Auto-Submitted, so it is never answered, even when it lands in the support mailbox);
- the webhook (worker.webhook), behind its own breaker `webhook:<store>`.

Each channel is recorded as it goes out, so a retry repeats only the channel that failed. A
channel that fails for good (a refused recipient, a webhook answering 404) is recorded and does
not hold back the other; when every channel failed for good the job dead-letters, and a
dead-lettered notify job notifies nobody (no notification about a notification). For the same
reason this handler never records its failures on the store's SMTP breaker: a digest that cannot
be sent must not open a breaker and tell people about itself. It does respect an open SMTP
breaker (the job is deferred until SMTP works again, without spending attempts) after trying the
webhook, which is how people hear about failing SMTP credentials.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from email.errors import HeaderParseError
from typing import Any

import httpx

from worker import digest as digestmod
from worker import smtp, webhook
from worker.config import DEFAULTS
from worker.errors import PermanentError, WorkerError
from worker.models import MailAccount
from worker.pipeline.context import Services
from worker.queue.handlers import JobRun
from worker.queue.outcome import Outcome, Settled
from worker.queue.trace import finish

JOB_TYPE = "notify"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NotifyOptions:
    """Where digests link to and how the webhook is called; the defaults are Settings'."""

    console_url: str | None = DEFAULTS.console_url
    webhook_timeout_seconds: float = DEFAULTS.webhook_timeout_seconds
    webhook_allow_private_hosts: bool = DEFAULTS.webhook_allow_private_hosts


class NotifyHandler:
    """Delivers one store's digest (a `notify` job)."""

    def __init__(
        self,
        services: Services,
        options: NotifyOptions | None = None,
        http: httpx.Client | None = None,  # None: a short-lived client per post (one a digest)
    ) -> None:
        self.services = services
        self.options = options or NotifyOptions()
        self.http = http

    def handle(self, run: JobRun) -> Outcome:
        """Take the digest, send what has not gone out yet, then finish it in one transaction."""
        db = self.services.db
        taken = db.take_notification_digest(run.job_id, run.worker_id)
        if taken is None:
            # Not a notify job this worker holds (lease lost, store deleted): nothing to send.
            raise PermanentError("notify: no digest for this job (store gone or lease lost)")
        digest = digestmod.Digest.from_taken(taken, self.options.console_url)
        state: Mapping[str, Any] = taken.get("digest") or {}
        result: dict[str, Any] = {"items": len(digest.items)}
        if not digest.items:
            return self._finish(run, "nothing_to_tell", result)

        recipients = [str(r) for r in taken.get("recipients") or []]
        email_error: WorkerError | None = None
        if state.get("email_sent_at") is None and not state.get("email_error"):
            email_error = self._email(run, digest, recipients)
        webhook_error: WorkerError | None = None
        if (
            taken.get("webhook")
            and state.get("webhook_sent_at") is None
            and not state.get("webhook_error")
        ):
            webhook_error = self._webhook(run, digest)

        for error in (email_error, webhook_error):
            if error is not None and error.error_type == "transient":
                raise error  # the channel that went out is recorded; a retry skips it
        # Every failure left is permanent, this attempt's or one recorded by an earlier one.
        email_failed = email_error is not None or bool(state.get("email_error"))
        webhook_failed = bool(taken.get("webhook")) and (
            webhook_error is not None or bool(state.get("webhook_error"))
        )
        if email_failed and (webhook_failed or not taken.get("webhook")):
            reasons = [str(e) for e in (email_error, webhook_error) if e is not None]
            reasons += [str(state[k]) for k in ("email_error", "webhook_error") if state.get(k)]
            raise PermanentError("notify: every channel failed: " + "; ".join(reasons))
        result.update(
            recipients=len(recipients),
            webhook=bool(taken.get("webhook")),
            email_failed=email_failed or None,
            webhook_failed=webhook_failed or None,
        )
        return self._finish(run, "sent", result)

    def dead_lettered(self, job: Mapping[str, Any]) -> None:
        """Nothing to undo: the items stay with the dead digest; a requeue sends them."""

    # -- channels -----------------------------------------------------------------------------

    def _email(
        self, run: JobRun, digest: digestmod.Digest, recipients: list[str]
    ) -> WorkerError | None:
        """Send the digest email; None when sent, else the error (recorded when permanent)."""
        services, db = self.services, self.services.db
        smtp_service = f"smtp:{digest.store_id}"
        try:
            if not services.breakers.allow(smtp_service):
                return services.breakers.open_error(smtp_service)
            store = db.get_store(digest.store_id)
            if store is None:
                raise PermanentError("the store is gone", service=smtp.SERVICE)
            secrets = services.secrets(digest.store_id)
            try:
                message = digestmod.build_email(digest, recipients)
                smtp.message_bytes(message)  # header errors surface when it is written
            except (ValueError, TypeError, LookupError, HeaderParseError) as exc:
                raise PermanentError(
                    f"digest cannot be built: {exc}", service=smtp.SERVICE
                ) from exc
            with run.trace.timed("smtp"):
                services.mail.send(
                    message, MailAccount.smtp(store, secrets.get("smtp_password")), None
                )
        except WorkerError as exc:
            log.warning("job %s: digest email failed: %s", run.job_id, exc)
            if exc.error_type == "permanent":
                db.record_notification_channel(run.job_id, "email", {"error": str(exc)})
            return exc
        # A success may close a breaker this call probed; a failure is not recorded (see above).
        services.breakers.record(smtp_service, True)
        db.record_notification_channel(
            run.job_id, "email", {"to": recipients, "message_id": digestmod.message_id(digest)}
        )
        return None

    def _webhook(self, run: JobRun, digest: digestmod.Digest) -> WorkerError | None:
        """Post the digest to the store's webhook; None when delivered, else the error."""
        services, db = self.services, self.services.db
        service = webhook.breaker_service(digest.store_id)
        try:
            if not services.breakers.allow(service):
                return services.breakers.open_error(service)
            url = db.get_notification_webhook(digest.store_id)
            if url is None:
                return None  # removed since the digest was taken
            with run.trace.timed("webhook"):
                status = webhook.post(
                    self.http,
                    url,
                    digestmod.webhook_body(digest),
                    timeout_seconds=self.options.webhook_timeout_seconds,
                    allow_private=self.options.webhook_allow_private_hosts,
                )
        except WorkerError as exc:
            log.warning("job %s: digest webhook failed: %s", run.job_id, exc)
            if exc.error_type == "transient" or exc.is_auth_failure:
                services.breakers.record(service, False)
            if exc.error_type == "permanent":
                db.record_notification_channel(run.job_id, "webhook", {"error": str(exc)})
            return exc
        services.breakers.record(service, True)
        db.record_notification_channel(run.job_id, "webhook", {"status": status})
        return None

    def _finish(self, run: JobRun, outcome: str, result: dict[str, Any]) -> Outcome:
        summary = finish(run.trace, outcome, **result)
        if not self.services.db.finish_notification_digest(run.job_id, run.worker_id, summary):
            # Another worker holds the job now; its take sees the channels recorded above and
            # sends nothing twice.
            log.warning("job %s: digest delivered but the lease was lost", run.job_id)
        return Settled(summary)
