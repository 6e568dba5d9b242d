"""The `mailbox_record` job: make the store's mailbox show what happened to one reply.

A trigger on the reply's status enqueues it in the transaction that records the reply sent,
held, approved, discarded or superseded (migration 20261202000200_mailbox_record, decision 0019),
so the SMTP send and its record never depend on IMAP. The job reads the reply as it is when it
runs and brings the mailbox to match, which makes a retry, a late job or a job for an older
state harmless:

- sent: a copy in Sent (unless the store says never, or, in auto mode, the server files
  SMTP-submitted mail itself, as Gmail does), the customer's message marked \\Seen and
  \\Answered (and the reply's own trace copy in the INBOX, if it arrived, \\Seen), and the
  Drafts copy (if it was held) removed;
- held (not in doubt): a copy in Drafts (\\Draft) a person can finish in their own mail client;
- anything else: the Drafts copy removed.

Each write looks for its Message-ID first, so nothing is appended twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.errors import HeaderParseError
from typing import Any

from imapclient import IMAPClient

from worker import compose, mailbox, smtp
from worker.errors import PermanentError
from worker.models import MailAccount, MailboxSettings
from worker.pipeline.context import Services
from worker.queue.breakers import guarded
from worker.queue.handlers import JobRun
from worker.queue.outcome import Complete, Outcome
from worker.queue.trace import finish

log = logging.getLogger(__name__)

JOB_TYPE = "mailbox_record"


@dataclass(frozen=True)
class RecordPlan:
    """What the mailbox should show for a reply in its current state."""

    file_sent: bool = False
    mark_answered: bool = False
    place_draft: bool = False
    remove_draft: bool = False

    @property
    def empty(self) -> bool:
        return not (self.file_sent or self.mark_answered or self.place_draft or self.remove_draft)


def plan_for(
    status: str, hold_reason: str | None, settings: MailboxSettings, *, by_person: bool = False
) -> RecordPlan:
    """The mailbox changes for a reply now in `status` (pure); `by_person`: a person approved,
    wrote or discarded it in the console (only such a reply can have been held as a draft
    before it was sent).

    A reply held because its delivery is in doubt is never placed in Drafts: it may have reached
    the customer, and a draft invites a second send.
    """
    sent = status == "sent"
    draftable = status == "held" and hold_reason != "delivery_in_doubt"
    return RecordPlan(
        file_sent=sent and settings.sent != "never",
        mark_answered=sent and settings.mark_answered,
        place_draft=draftable and settings.drafts,
        remove_draft=settings.drafts and not draftable and (by_person or not sent),
    )


def reply_copy(
    reply: Mapping[str, Any], store: Mapping[str, Any], *, draft: bool
) -> tuple[str, bytes]:
    """(Message-ID, bytes) of the reply as filed: as sent, or as a draft for a person.

    The draft carries its own Message-ID and no auto-reply markers: a person finishing it in
    their mail client sends a message of their own.
    """
    message_id = (
        mailbox.draft_message_id(str(reply["id"]), str(store["support_email"]))
        if draft
        else str(reply["smtp_message_id"])
    )
    sent_at = reply.get("sent_at")
    try:
        message = compose.build_reply(
            from_address=str(store["support_email"]),
            from_name=str(store.get("name") or ""),
            to_address=str(reply["to_address"]),
            original_subject=str(reply.get("subject") or ""),
            in_reply_to=reply.get("in_reply_to"),
            references=list(reply.get("references") or []),
            body_text=str(reply.get("body_text") or ""),
            message_id=message_id,
            date=sent_at if isinstance(sent_at, datetime) and not draft else None,
        )
        if draft:
            del message["Auto-Submitted"]
            del message["X-Auto-Response-Suppress"]
        return message_id, smtp.message_bytes(message)
    except (ValueError, TypeError, LookupError, HeaderParseError) as exc:
        # No retry writes it any better: the job ends in the dead-letter queue with the reason.
        raise PermanentError(f"reply copy cannot be built: {exc}", service=compose.SERVICE) from exc


def apply_plan(
    client: IMAPClient,
    plan: RecordPlan,
    settings: MailboxSettings,
    reply: Mapping[str, Any],
    store: Mapping[str, Any],
    message: Mapping[str, Any],
) -> dict[str, Any]:
    """Do the plan over an open connection; returns what was done, for the job's result."""
    done: dict[str, Any] = {}
    if plan.remove_draft or plan.place_draft:
        folder = mailbox.drafts_folder(client, settings.drafts_folder)
        if folder is None:
            done["drafts"] = "no_drafts_folder"
        elif plan.place_draft:
            message_id, raw = reply_copy(reply, store, draft=True)
            appended = mailbox.append_once(
                client, folder, message_id, raw, (mailbox.DRAFT, mailbox.SEEN)
            )
            done["drafts"] = "placed" if appended else "already_there"
            done["drafts_folder"] = folder
        else:
            message_id = mailbox.draft_message_id(str(reply["id"]), str(store["support_email"]))
            done["drafts_removed"] = mailbox.remove(client, folder, message_id)
    if plan.file_sent:
        if settings.sent == "auto" and mailbox.provider_files_sent(client):
            done["sent"] = "provider_files_sent"
        else:
            folder = mailbox.sent_folder(client, settings.sent_folder)
            if folder is None:
                done["sent"] = "no_sent_folder"
            else:
                message_id, raw = reply_copy(reply, store, draft=False)
                when = reply.get("sent_at")
                appended = mailbox.append_once(
                    client,
                    folder,
                    message_id,
                    raw,
                    (mailbox.SEEN,),
                    when if isinstance(when, datetime) else None,
                )
                done["sent"] = "filed" if appended else "already_there"
                done["sent_folder"] = folder
    if plan.mark_answered:
        original = str(message.get("message_id") or "")
        folder = str(message.get("imap_folder") or store.get("imap_folder") or "INBOX")
        if not mailbox.searchable(original):
            # The customer's Message-ID is theirs to choose; one we cannot search for safely
            # leaves their email as it is rather than failing the job.
            done["marked_answered"] = "unsearchable_message_id"
        else:
            done["marked_answered"] = mailbox.add_flags(
                client, folder, original, (mailbox.SEEN, mailbox.ANSWERED)
            )
        # The reply's own trace copy (decision 0017), when it has arrived: our mail, read by
        # definition, so it does not sit in the INBOX as new mail. It stays: it is the proof.
        inbox = str(store.get("imap_folder") or "INBOX")
        done["trace_copy_marked_read"] = mailbox.add_flags(
            client, inbox, str(reply["smtp_message_id"]), (mailbox.SEEN,)
        )
    return done


class MailboxRecordHandler:
    """Brings the store's mailbox in line with one reply (a `mailbox_record` job)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def handle(self, run: JobRun) -> Outcome:
        """Load the reply, plan the mailbox changes for its state, and make them."""
        reply_id = str((run.job.get("payload") or {}).get("reply_id") or "")
        loaded = self.services.db.load_mailbox_record(reply_id) if reply_id else None
        if loaded is None:
            return Complete(finish(run.trace, "skipped", reason="reply_gone"))
        reply, store, message = loaded["reply"], loaded["store"], loaded["message"]
        settings = MailboxSettings.from_store(store)
        status = str(reply.get("status") or "")
        plan = plan_for(
            status, reply.get("hold_reason"), settings, by_person=bool(reply.get("author_id"))
        )
        if plan.empty:
            return Complete(finish(run.trace, "nothing_to_file", reply_status=status))
        opener = self.services.mail.open_imap
        if opener is None:
            raise PermanentError("no IMAP opener configured", service="imap")
        store_id = str(store["id"])
        account = MailAccount.imap(store, self.services.secrets(store_id).get("imap_password"))

        def record() -> dict[str, Any]:
            with opener(account) as client, run.trace.timed("imap"):
                return apply_plan(client, plan, settings, reply, store, message)

        done = guarded(self.services.breakers, f"imap:{store_id}", record)
        return Complete(finish(run.trace, "filed", reply_id=reply_id, reply_status=status, **done))

    def dead_lettered(self, job: Mapping[str, Any]) -> None:
        """Nothing to undo: the reply and its credit never depend on the mailbox."""
