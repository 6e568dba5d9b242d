"""fetch-emails: pull new mail from every active store's mailbox into the queue.

Stores are fetched in parallel and isolated from one another: a store whose server is down or
whose password is wrong is recorded (event + its IMAP circuit breaker) and the others proceed.
Durability rests on one rule: the stored last UID only moves forward in the same SQL call that
stores the messages up to it (`ingest_messages`), so a crash at any point re-fetches at most a
chunk that the Message-ID dedupe then absorbs.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from worker import imap, mime
from worker.db import Database
from worker.errors import ConfigError, TransientError, WorkerError
from worker.runs import Budget

log = logging.getLogger(__name__)

INGEST_CHUNK = 50  # messages per ingest_messages call: one transaction, bounded payload


MailboxOpener = Callable[..., AbstractContextManager[Any]]


@dataclass(frozen=True)
class FetchOptions:
    """Tuning for one fetch run; built from Settings by the wiring."""

    concurrency: int = 10
    max_per_store: int = 50
    store_timeout_seconds: float = 60.0
    imap_timeout_seconds: float = 30.0
    max_message_bytes: int = 26_214_400
    ca_file: str | None = None


@dataclass
class StoreOutcome:
    """What happened to one store in one run."""

    store_id: str
    status: str = "ok"  # ok | failed | breaker_open | not_started
    fetched: int = 0
    stored: int = 0
    duplicates: int = 0
    skipped: int = 0
    uidvalidity_changed: bool = False
    error: str | None = None
    error_type: str | None = None
    job_ids: list[str] = field(default_factory=list)


def imap_service(store_id: str) -> str:
    """The circuit-breaker name of a store's mailbox."""
    return f"imap:{store_id}"


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def to_ingest_rows(batch: imap.FetchBatch, max_bytes: int) -> list[dict[str, Any]]:
    """Parse each fetched message once into the JSON shape `ingest_messages` stores."""
    rows = []
    for item in batch.messages:
        if item.oversized:
            parsed = mime.header_only_stub(item.data, uid=item.uid, size_bytes=item.size)
            row = parsed.to_ingest_json()
            row["skip_reason"] = "oversized"
            row["detail"] = f"{item.size} bytes exceeds the {max_bytes}-byte limit"
        else:
            row = mime.parse_message(item.data, uid=item.uid).to_ingest_json()
        row["uid"] = item.uid
        row["size_bytes"] = item.size
        rows.append(row)
    return rows


def fetch_store(
    db: Database,
    store: dict[str, Any],
    open_mailbox: MailboxOpener,
    options: FetchOptions,
    deadline: float,
) -> StoreOutcome:
    """Fetch one store's new mail; every failure is contained in the returned outcome."""
    store_id = str(store["id"])
    outcome = StoreOutcome(store_id=store_id)
    service = imap_service(store_id)
    if not db.circuit_allow(service):
        outcome.status = "breaker_open"
        return outcome
    folder = store.get("imap_folder") or "INBOX"
    try:
        secrets = db.get_store_secrets(store_id)
        state = db.get_mailbox_state(store_id, folder)
        known_uidvalidity = (
            int(state["uidvalidity"]) if state and state.get("uidvalidity") else None
        )
        last_uid = int(state["last_uid"]) if state else 0
        with open_mailbox(
            store["imap_host"],
            int(store["imap_port"]),
            store["imap_tls"],
            store["imap_user"],
            secrets.get("imap_password") or "",
            timeout_seconds=options.imap_timeout_seconds,
            ca_file=options.ca_file,
        ) as client, _time_limit(client, deadline):
            batch = imap.fetch_new_messages(
                client,
                folder,
                last_uid=last_uid,
                known_uidvalidity=known_uidvalidity,
                limit=options.max_per_store,
                max_bytes=options.max_message_bytes,
            )
        outcome.uidvalidity_changed = batch.uidvalidity_changed
        outcome.fetched = len(batch.messages)
        rows = to_ingest_rows(batch, options.max_message_bytes)
        if not rows and (batch.uidvalidity_changed or known_uidvalidity is None):
            # Nothing new, but remember the (new) UIDVALIDITY so the next run compares with it.
            db.ingest_messages(store_id, folder, batch.uidvalidity, 0, [])
        for chunk in chunks(rows, INGEST_CHUNK):
            if time.monotonic() > deadline:
                # The UID stays at the last stored chunk: the rest comes next run, nothing lost.
                outcome.error = "store time limit reached"
                break
            result = db.ingest_messages(
                store_id, folder, batch.uidvalidity, max(r["uid"] for r in chunk), list(chunk)
            )
            outcome.stored += int(result.get("stored", 0))
            outcome.duplicates += int(result.get("duplicates", 0))
            outcome.skipped += int(result.get("skipped", 0))
            outcome.job_ids.extend(str(j) for j in result.get("job_ids") or [])
    except ConfigError:
        # The deployment's fault (e.g. an unreadable EXTRA_CA_FILE), the same for every store:
        # counting it against each store's breaker would shut every mailbox out for no reason.
        raise
    except WorkerError as exc:
        outcome.status = "failed"
        outcome.error = str(exc)
        outcome.error_type = exc.error_type
        _record_failure(db, service, store_id, exc)
        return outcome
    db.circuit_record(service, True)
    return outcome


@contextmanager
def _time_limit(client: Any, deadline: float) -> Iterator[None]:
    """Cut the connection at the store's deadline; the fetch then fails as a timeout.

    IMAP timeouts bound each socket read, not the whole fetch: a server that trickles bytes (or a
    slow link with a large message) would otherwise hold this store's thread, and with it the
    whole run and the single-run guard, for as long as it likes.
    """
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _abort_connection(client)

    # Clamped: a far-off deadline (a caller's "no limit") must not overflow the timer's wait.
    delay = min(max(0.0, deadline - time.monotonic()), threading.TIMEOUT_MAX)
    timer = threading.Timer(delay, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except WorkerError as exc:
        if expired.is_set():
            raise TransientError(
                "store time limit reached while reading the mailbox", service=imap.SERVICE
            ) from exc
        raise
    finally:
        timer.cancel()


def _abort_connection(client: Any) -> None:
    sock_of = getattr(client, "socket", None)
    try:
        sock = sock_of() if callable(sock_of) else None
        if isinstance(sock, socket.socket):
            # The plain socket's shutdown, not SSLSocket's: it wakes the blocked read in the
            # other thread without touching the TLS object that thread is using.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: nothing left to unblock


def _record_failure(db: Database, service: str, store_id: str, exc: WorkerError) -> None:
    log.warning("fetch failed for store %s: %s", store_id, exc)
    try:
        db.circuit_record(service, False)
        db.record_events(
            [
                {
                    "store_id": store_id,
                    "event_type": "fetch.store_failed",
                    "detail": {"error": str(exc), "error_type": exc.error_type},
                }
            ]
        )
    except WorkerError:
        # The database itself is failing; the run summary still carries the store's error.
        log.exception("could not record the fetch failure of store %s", store_id)


def run_fetch(
    db: Database,
    budget: Budget,
    *,
    open_mailbox: MailboxOpener = imap.open_mailbox,
    options: FetchOptions | None = None,
) -> dict[str, Any]:
    """One fetch-emails run over every active store; returns the run summary."""
    options = options or FetchOptions()
    # Fail the run before touching any store when the configured CA bundle is unusable.
    imap.client_ssl_context(options.ca_file)
    stores = db.list_active_stores()
    outcomes: list[StoreOutcome] = []

    def guarded(store: dict[str, Any]) -> StoreOutcome:
        if budget.expired():
            return StoreOutcome(store_id=str(store["id"]), status="not_started")
        deadline = time.monotonic() + min(options.store_timeout_seconds, budget.remaining())
        try:
            return fetch_store(db, store, open_mailbox, options, deadline)
        except Exception as exc:  # a bug in one store's path must not sink the others
            log.exception("unexpected error fetching store %s", store.get("id"))
            error_type = exc.error_type if isinstance(exc, WorkerError) else "transient"
            return StoreOutcome(
                store_id=str(store["id"]), status="failed", error=repr(exc), error_type=error_type
            )

    with ThreadPoolExecutor(
        max_workers=max(1, options.concurrency), thread_name_prefix="fetch"
    ) as pool:
        outcomes = list(pool.map(guarded, stores))

    return summarize(outcomes)


def summarize(outcomes: list[StoreOutcome]) -> dict[str, Any]:
    """The run summary: totals plus a line per store that did not simply succeed."""
    return {
        "stores": len(outcomes),
        "stores_ok": sum(o.status == "ok" for o in outcomes),
        "stores_failed": sum(o.status == "failed" for o in outcomes),
        "stores_breaker_open": sum(o.status == "breaker_open" for o in outcomes),
        "stores_not_started": sum(o.status == "not_started" for o in outcomes),
        "fetched": sum(o.fetched for o in outcomes),
        "stored": sum(o.stored for o in outcomes),
        "duplicates": sum(o.duplicates for o in outcomes),
        "skipped": sum(o.skipped for o in outcomes),
        "jobs_enqueued": sum(len(o.job_ids) for o in outcomes),
        "errors": [
            {"store_id": o.store_id, "error": o.error, "error_type": o.error_type}
            for o in outcomes
            if o.error
        ],
    }
