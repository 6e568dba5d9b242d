"""Replies a person sent from their own mail client (decision 0019).

A person who answers a held conversation in their mail client leaves the answer in the store's
Sent folder, threaded under the customer's message (In-Reply-To, References). Each fetch of a
store reads the Sent folder's new UIDs (its own position, `sent_scan_state`) over the
connection the fetch already has open, and `record_sent_scan` marks such conversations answered
by that person and their held replies superseded, in one transaction with the position: a
superseded reply is never sent by us. The scan never fails the store's fetch; a failure is
logged and recorded, and the next fetch reads on from the same position.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from worker import mailbox
from worker.db import Database
from worker.errors import WorkerError
from worker.models import MailboxSettings, Store

log = logging.getLogger(__name__)

SCAN_LIMIT = 200  # Sent messages read per fetch of a store; the rest on the next fetch


@dataclass(frozen=True)
class SentScan:
    """What one scan of a store's Sent folder did."""

    folder: str | None = None
    read: int = 0
    answered: int = 0
    superseded: int = 0
    error: str | None = None


def scan_sent(db: Database, client: Any, store: Store, limit: int = SCAN_LIMIT) -> SentScan:
    """Read the Sent folder's new messages and record a person's answers among them."""
    settings = MailboxSettings.from_store(store.row)
    folder = mailbox.sent_folder(client, settings.sent_folder)
    if folder is None:
        return SentScan()
    state = db.get_sent_scan_state(store.id)
    same_folder = state is not None and state.get("folder") == folder
    known = int(state["uidvalidity"]) if state is not None and same_folder else None
    last_uid = int(state["last_uid"]) if state is not None and same_folder else 0
    batch = mailbox.read_sent(client, folder, last_uid, known, limit)
    if not batch.baseline and not batch.messages and batch.highest_uid == last_uid:
        return SentScan(folder=folder)
    result = db.record_sent_scan(
        store.id,
        folder,
        batch.uidvalidity,
        batch.highest_uid,
        [message.as_json() for message in batch.messages],
    )
    return SentScan(
        folder=folder,
        read=len(batch.messages),
        answered=int(result.get("answered") or 0),
        superseded=int(result.get("superseded") or 0),
    )


def scan_sent_quietly(db: Database, client: Any, store: Store) -> SentScan:
    """scan_sent for the store's fetch: a failure is logged and recorded, never raised."""
    try:
        return scan_sent(db, client, store)
    except WorkerError as exc:
        log.warning("sent scan failed for store %s: %s", store.id, exc)
        try:
            db.record_events(
                [
                    {
                        "store_id": store.id,
                        "event_type": "fetch.sent_scan_failed",
                        "detail": {"error": str(exc), "error_type": exc.error_type},
                    }
                ]
            )
        except WorkerError:
            log.exception("could not record the sent scan failure of store %s", store.id)
        return SentScan(error=str(exc))
