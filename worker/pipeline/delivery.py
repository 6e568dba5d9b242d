"""Exactly one reply: the reply row moves drafted -> sending -> sent in the database.

A job that finds its reply `sent` completes without sending; one found `sending` was interrupted
between the SMTP hand-off and the bookkeeping, so we cannot know whether the customer got it. We
then look for our deterministic Message-ID in the store's Sent folder (providers such as Gmail
and Microsoft 365 file SMTP-submitted mail there) and in the store's inbox (every reply carries
the store's own address as an extra envelope recipient, so its copy lands there): found means
sent; not found means the reply is held for a person, until fetch reads the copy. We never
send in doubt, so a customer never receives two replies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.message import EmailMessage
from typing import Any

from worker import compose, smtp
from worker.errors import DatabaseError, PermanentError, WorkerError
from worker.models import MailAccount
from worker.pipeline.context import JobContext, JobDone
from worker.queue.trace import finish
from worker.smtp import SendInDoubtError

log = logging.getLogger(__name__)

# Recording a send that SMTP accepted is retried through a database blip (finish_send is
# idempotent): waits double from the first to the longest, until the job's lease ends (then
# another worker may take the job over), and for at least the minimum even when the lease is
# nearly spent, so a blip at the end of a lease is still ridden out.
RECORD_SENT_FIRST_WAIT_SECONDS = 0.2
RECORD_SENT_LONGEST_WAIT_SECONDS = 5.0
RECORD_SENT_MIN_SECONDS = 5.0


def resume_reply(ctx: JobContext) -> None:
    """Take the job's reply row to its end state from wherever an earlier attempt left it.

    Ends the job: JobDone (held, already sent, failed) or `ctx.settled` (sent now).
    """
    reply = ctx.reply
    if reply is None:
        raise RuntimeError("pipeline step order: no reply to deliver")
    store, services, db = ctx.store, ctx.services, ctx.db
    reply_id = str(reply["id"])
    intent = ctx.classification_.intent if ctx.classification_ else None
    result = {"reply_id": reply_id, "intent": intent or reply.get("intent"), "credit": ctx.credit}
    status = reply["status"]
    if status == "held":
        raise JobDone("held", hold_reason=reply.get("hold_reason"), **result)
    if status == "sent":
        raise JobDone("replied", already_sent=True, **result)
    if status == "failed":
        raise JobDone("failed", error=reply.get("error"), **result)
    if status == "superseded":
        # A person answered from their own mail client (decision 0019): never sent by us. A job
        # that charged before it found out gives the credit back (idempotent; none taken: no-op).
        ctx.db.release_credit(str(ctx.store["id"]), ctx.job_id, "answered_by_person")
        raise JobDone("superseded", answered_by=reply.get("answered_by"), **result)

    secrets = services.secrets(str(store["id"]))
    smtp_service = f"smtp:{store['id']}"
    if status == "sending":
        resolve_in_doubt(ctx, reply, secrets, result)
        return

    # Built (and written out) before the reply moves to `sending`: a reply that cannot be written
    # must fail while it is still plainly unsent, refunded, not stuck in `sending` where it
    # could only end as in doubt.
    message = build_checked(ctx, reply)
    if not services.breakers.allow(smtp_service):
        raise services.breakers.open_error(smtp_service)
    gate = db.begin_send(reply_id)
    if gate == "already_sent":
        raise JobDone("replied", already_sent=True, **result)
    if gate == "in_doubt":
        resolve_in_doubt(ctx, reply, secrets, result)
        return
    if gate == "held":
        raise JobDone("held", hold_reason=reply.get("hold_reason"), **result)
    if gate == "superseded":
        raise JobDone("superseded", **result)
    if gate != "ok":
        raise JobDone("failed", error=f"reply is {gate}", **result)

    try:
        with ctx.trace.timed("smtp"):
            sent = services.mail.send(
                message,
                MailAccount.smtp(store, secrets.get("smtp_password")),
                str(store.get("support_email") or "") or None,
            )
    except WorkerError as exc:
        services.breakers.record(smtp_service, exc.error_type == "permanent")
        if isinstance(exc, SendInDoubtError):
            # The connection died after DATA: the server may have taken it. Stay `sending`; the
            # retry resolves it through the Sent folder instead of risking a second reply.
            raise
        if exc.error_type == "permanent":
            db.reset_reply(reply_id, "failed", str(exc))
            db.release_credit(str(store["id"]), ctx.job_id, "send_failed")
        else:
            db.reset_reply(reply_id, "drafted", str(exc))
        raise
    services.breakers.record(smtp_service, True)
    copy_refused = getattr(sent, "copy_refused", None)
    if copy_refused:
        # The customer has the reply; only the trace is missing, so an in-doubt retry of this
        # reply could not be resolved by its copy. Recorded for the store's operator.
        ctx.trace.event("reply.copy_refused", reply_id=reply_id, response=copy_refused)
    summary = finish(ctx.trace, "replied", **result)
    if not record_sent(ctx, reply_id, summary):
        log.warning(
            "job %s: reply sent but the lease was lost; the reply is recorded as sent", ctx.job_id
        )
    ctx.settled = summary


def build_checked(ctx: JobContext, reply: Mapping[str, Any]) -> EmailMessage:
    """The reply as it will be sent; a reply that cannot be built is refunded and fails for good."""
    store = ctx.store
    try:
        message = compose.build_reply(
            from_address=str(store["support_email"]),
            from_name=str(store.get("name") or ""),
            to_address=str(reply["to_address"]),
            original_subject=str(reply["subject"]),
            in_reply_to=reply.get("in_reply_to"),
            references=list(reply.get("references") or []),
            body_text=str(reply["body_text"]),
            message_id=str(reply["smtp_message_id"]),
        )
        smtp.message_bytes(message)  # header errors surface when the message is written
    except (WorkerError, ValueError, TypeError, LookupError, HeaderParseError) as exc:
        ctx.db.release_credit(str(store["id"]), ctx.job_id, "unbuildable")
        raise PermanentError(f"reply cannot be built: {exc}", service=compose.SERVICE) from exc
    return message


def resolve_in_doubt(
    ctx: JobContext,
    reply: Mapping[str, Any],
    secrets: Mapping[str, Any],
    result: dict[str, Any],
) -> None:
    """A reply left `sending` by a dead worker: sent if the Sent folder or its own copy in the
    store's inbox has it, else held (a later fetch of the copy turns it `sent`, see 0017)."""
    reply_id = str(reply["id"])
    mailbox = MailAccount.imap(ctx.store, secrets.get("imap_password"))
    found = ctx.services.mail.find_sent(
        mailbox, str(reply["smtp_message_id"]), str(ctx.store.get("imap_folder") or "INBOX")
    )
    if found:
        ctx.trace.event("process.in_doubt_resolved", found_in=found)
        summary = finish(ctx.trace, "replied", in_doubt_resolved=found, **result)
        record_sent(ctx, reply_id, summary)
        ctx.settled = summary
        return
    ctx.db.reset_reply(reply_id, "held", "delivery_in_doubt")
    raise JobDone("held", hold_reason="delivery_in_doubt", **result)


def record_sent(ctx: JobContext, reply_id: str, summary: dict[str, Any]) -> bool:
    """finish_send, retried on a transient database error until the job's lease ends.

    The customer has the reply once SMTP accepted it; giving up here would leave it `sending`
    and the next attempt would hold it as in doubt. Returns finish_send's answer (False: the
    lease was lost, the reply is recorded as sent all the same).
    """
    deadline = time.monotonic() + max(lease_left_seconds(ctx.job), RECORD_SENT_MIN_SECONDS)
    wait = RECORD_SENT_FIRST_WAIT_SECONDS
    retries = 0
    while True:
        try:
            recorded = ctx.db.finish_send(reply_id, ctx.job_id, ctx.run.worker_id, summary)
        except DatabaseError as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            retries += 1
            log.warning("job %s: recording the sent reply failed (%s); retrying", ctx.job_id, exc)
            time.sleep(min(wait, left))
            wait = min(wait * 2, RECORD_SENT_LONGEST_WAIT_SECONDS)
            continue
        if retries:
            log.info("job %s: sent reply recorded after %d retries", ctx.job_id, retries)
        return bool(recorded)


def lease_left_seconds(job: Mapping[str, Any]) -> float:
    """Seconds left of the lease the claim gave the job (0 when the row does not say)."""
    locked_until = job.get("locked_until")
    if not isinstance(locked_until, datetime):
        return 0.0
    return (locked_until - datetime.now(UTC)).total_seconds()
