"""Reading one store's mailbox into the queue: `fetch_store`, the work of a fetch_mailbox job.

Each store is fetched by its own job (worker/fetch_jobs.py), isolated from the others: a store
whose server is down or whose password is wrong is recorded (event + its IMAP circuit breaker)
and its job retried, while the others proceed.
Durability rests on one rule: the stored last UID only moves forward in the same SQL call that
stores the messages up to it (`ingest_messages`), so a crash at any point re-fetches at most a
chunk that the Message-ID dedupe then absorbs.

A mailbox's history is never answered: the first fetch of a folder takes only mail that arrived
after the store was connected, and a UIDVALIDITY change resynchronises from shortly before the
last ingest instead of re-reading the whole folder. Older mail is skipped without being read.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from worker import imap, mime, mime_limits, parse_pool, sent_scan
from worker.config import DEFAULTS, Settings
from worker.db import Database
from worker.errors import ConfigError, PermanentError, TransientError, WorkerError
from worker.models import Store

log = logging.getLogger(__name__)

INGEST_CHUNK = 50  # messages per ingest_messages call: one transaction, bounded payload
# The store's created_at comes from the database's clock and INTERNALDATE from the mail server's:
# mail delivered just after connecting must not be lost to a small difference between them.
CLOCK_SKEW = timedelta(seconds=60)
# After a UIDVALIDITY change, mail since this long before the last ingest is read again; the
# Message-ID dedupe absorbs what was already stored.
RESYNC_OVERLAP = timedelta(days=1)
STOP_POLL_SECONDS = 0.2  # how soon a shutdown request cuts a store's IMAP connection
# Parsed messages are stored before parsing one this large (its parse may take long)...
SLOW_PARSE_BYTES = 256 * 1024
# ...and before any parse once the first unstored one has waited this long (seconds).
FLUSH_SECONDS = 1.0
INT4_MAX = 2**31 - 1  # messages.size_bytes is an int


MailboxOpener = Callable[..., AbstractContextManager[Any]]


@dataclass(frozen=True)
class FetchOptions:
    """Tuning for one fetch run; the defaults are Settings' (tests override single fields)."""

    concurrency: int = DEFAULTS.fetch_concurrency
    max_per_store: int = DEFAULTS.fetch_max_per_store
    store_timeout_seconds: float = DEFAULTS.store_timeout_seconds
    imap_timeout_seconds: float = DEFAULTS.imap_timeout_seconds
    max_message_bytes: int = DEFAULTS.max_message_bytes
    ca_file: str | None = DEFAULTS.extra_ca_file
    parse: parse_pool.ParseConfig = field(default_factory=parse_pool.ParseConfig)
    lease_seconds: int = DEFAULTS.lease_seconds  # of a fetch job (worker/fetch_jobs.py)

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchOptions:
        """Fetch tuning from Settings."""
        return cls(
            concurrency=settings.fetch_concurrency,
            max_per_store=settings.fetch_max_per_store,
            store_timeout_seconds=settings.store_timeout_seconds,
            imap_timeout_seconds=settings.imap_timeout_seconds,
            max_message_bytes=settings.max_message_bytes,
            ca_file=settings.extra_ca_file,
            parse=parse_pool.ParseConfig(
                processes=settings.parse_processes,
                timeout_seconds=settings.parse_timeout_seconds,
                memory_bytes=settings.parse_memory_mb * 1024 * 1024,
            ),
            lease_seconds=settings.lease_seconds,
        )


@dataclass
class StoreOutcome:
    """What happened to one store in one run."""

    store_id: str
    status: str = "ok"  # ok | partial | failed | breaker_open | not_started | stopped
    fetched: int = 0
    stored: int = 0
    duplicates: int = 0
    skipped: int = 0
    own_copies: int = 0  # our replies' own copies: proof of delivery, never stored (0017)
    uidvalidity_changed: bool = False
    left_alone: int = 0  # old mail skipped by a first fetch or a resync
    has_more: bool = False  # the mailbox held more new mail than this fetch's bound
    error: str | None = None
    error_type: str | None = None
    job_ids: list[str] = field(default_factory=list)


class FetchStopped(TransientError):
    """The run was asked to stop (shutdown) while this store was being fetched."""


class StoreTimeLimit(TransientError):
    """The store's time ran out before every fetched message was stored."""

    def __init__(self, message: str, *, service: str, progressed: bool) -> None:
        super().__init__(message, service=service)
        self.progressed = progressed


def imap_service(store_id: str) -> str:
    """The circuit-breaker name of a store's mailbox."""
    return f"imap:{store_id}"


def as_datetime(value: object) -> datetime | None:
    """A timestamp column as an aware datetime (psycopg gives datetimes, PostgREST ISO text)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def connected_since(store: dict[str, Any], now: datetime) -> datetime:
    """Mail that arrived before this instant predates the store: its first fetch skips it.

    A store row without created_at (never the case in the table) counts as connected now,
    so a mailbox's history is never answered by mistake.
    """
    created = as_datetime(store.get("created_at")) or now
    return created - CLOCK_SKEW


def resync_since(state: dict[str, Any] | None) -> datetime | None:
    """Where a resync after a UIDVALIDITY change starts: a day before the last ingest."""
    updated = as_datetime(state.get("updated_at")) if state else None
    return updated - RESYNC_OVERLAP if updated is not None else None


Parse = Callable[[bytes, int, int], dict[str, Any]]


def pool_parser(pool: parse_pool.ParsePool) -> Parse:
    """Parse with a bounded child-process pool (worker/parse_pool.py)."""

    def parse(raw: bytes, uid: int, size: int) -> dict[str, Any]:
        return pool.parse(raw, uid=uid, size_bytes=size).row

    return parse


def to_ingest_row(item: imap.FetchedMessage, max_bytes: int, parse: Parse) -> dict[str, Any]:
    """Parse one fetched message into the JSON shape `ingest_messages` stores."""
    if item.oversized:
        parsed = mime.limit_stub(item.data, uid=item.uid, size_bytes=item.size, reason="oversized")
        row = parsed.to_ingest_json()
        row["skip_reason"] = "oversized"
        row["detail"] = f"{item.size} bytes exceeds the {max_bytes}-byte limit"
    else:
        row = parse(item.data, item.uid, item.size)
    row["uid"] = item.uid
    row["size_bytes"] = item.size
    return row


def unstorable_stub(row: dict[str, Any], error: WorkerError) -> dict[str, Any]:
    """What is stored instead of a message the database refused: its ids only, never answered.

    Only values that cannot carry the offending byte are kept: the Message-ID (restricted to
    printable ASCII) keeps the dedupe working, so the next fetch does not try it again.
    """
    message_id = "".join(c for c in str(row.get("message_id") or "") if " " < c < "\x7f")
    if not (message_id.startswith("<") and message_id.endswith(">") and len(message_id) > 2):
        message_id = f"<unstorable-{row.get('uid')}@{mime.SYNTHETIC_DOMAIN}>"
    return {
        "message_id": message_id,
        "from_address": None,
        "from_name": None,
        "reply_to": None,
        "to_addresses": [],
        "cc_addresses": [],
        "subject": "",
        "date": None,
        "in_reply_to": None,
        "references": [],
        "headers": {},
        "body_text": "",
        "attachments": [],
        # Clamped: a size the server reported beyond int4 is itself a value the row refuses.
        "size_bytes": min(max(int(row.get("size_bytes") or 0), 0), INT4_MAX),
        "uid": row.get("uid"),
        "skip_reason": mime_limits.UNSTORABLE,
        "detail": str(error)[:500],
    }


def fetch_store(
    db: Database,
    store: dict[str, Any],
    open_mailbox: MailboxOpener,
    options: FetchOptions,
    deadline: float,
    stop_event: threading.Event | None = None,
    parse: Parse | None = None,
) -> StoreOutcome:
    """Fetch one store's new mail; every failure is contained in the returned outcome.

    The store stops at `deadline`, or as soon as `stop_event` is set, cutting its connection.
    Messages are parsed with `parse` (default: the process's bounded parse pool).
    """
    typed = Store.from_row(store)
    store_id, folder = typed.id, typed.imap_folder
    outcome = StoreOutcome(store_id=store_id)
    service = imap_service(store_id)
    if parse is None:
        parse = pool_parser(parse_pool.shared_pool(options.parse))
    if not db.circuit_allow(service):
        outcome.status = "breaker_open"
        return outcome
    try:
        account = typed.imap_account(db.get_store_secrets(store_id))
        state = db.get_mailbox_state(store_id, folder)
        known_uidvalidity = (
            int(state["uidvalidity"]) if state and state.get("uidvalidity") else None
        )
        last_uid = int(state["last_uid"]) if state else 0
        with (
            open_mailbox(
                account.host,
                account.port,
                account.tls,
                account.user,
                account.password,
                timeout_seconds=options.imap_timeout_seconds,
                ca_file=options.ca_file,
            ) as client,
            _time_limit(client, deadline, stop_event),
        ):
            batch = imap.fetch_new_messages(
                client,
                folder,
                last_uid=last_uid,
                known_uidvalidity=known_uidvalidity,
                limit=options.max_per_store,
                max_bytes=options.max_message_bytes,
                arrived_since=connected_since(store, datetime.now(UTC)),
                resync_since=resync_since(state),
            )
            # A person's replies from their own mail client (decision 0019); never fails the fetch.
            sent_scan.scan_sent_quietly(db, client, typed)
        outcome.uidvalidity_changed = batch.uidvalidity_changed
        outcome.fetched = len(batch.messages)
        outcome.left_alone = batch.left_alone
        outcome.has_more = batch.has_more
        ingested = False
        if not batch.messages and (batch.uidvalidity_changed or known_uidvalidity is None):
            # Nothing to store, but remember the (new) UIDVALIDITY so the next run compares with
            # it, and the position past any old mail this fetch left alone.
            _ingest(db, outcome, store_id, folder, batch.uidvalidity, batch.highest_uid, [])
            ingested = True
        pending: list[dict[str, Any]] = []
        waiting_since = 0.0
        messages = batch.messages
        for index, item in enumerate(messages):
            if (stop_event is not None and stop_event.is_set()) or time.monotonic() > deadline:
                if pending:
                    # Parsed work is never thrown away: stored up to the first unparsed UID.
                    _ingest(db, outcome, store_id, folder, batch.uidvalidity, item.uid - 1, pending)
                    ingested = True
                break
            # Stored as parsed: what is parsed is stored before a parse that may be slow (a large
            # message, or a while since the first pending one), so one bad message never holds
            # back the ones before it, and the store's time limit never loses parsed work.
            if pending and (
                len(item.data) > SLOW_PARSE_BYTES
                or time.monotonic() - waiting_since > FLUSH_SECONDS
            ):
                _ingest(db, outcome, store_id, folder, batch.uidvalidity, item.uid - 1, pending)
                ingested = True
                pending = []
            if not pending:
                waiting_since = time.monotonic()
            pending.append(to_ingest_row(item, options.max_message_bytes, parse))
            last = index == len(messages) - 1
            if len(pending) >= INGEST_CHUNK or last:
                position = batch.highest_uid if last else messages[index + 1].uid - 1
                _ingest(db, outcome, store_id, folder, batch.uidvalidity, position, pending)
                ingested = True
                pending = []
        if ingested:
            _record_window(db, store_id, folder, batch, known_uidvalidity)
        handled = outcome.stored + outcome.skipped + outcome.duplicates + outcome.own_copies
        if handled < len(messages):
            if stop_event is not None and stop_event.is_set():
                # Nothing lost: the UID stays at the last stored message for the next run.
                outcome.status = "stopped"
                outcome.error = "run stopped before every message was stored"
                return outcome
            # Counted, not passed over as ok: a mailbox that never gets through its mail within
            # the time limit must show up in events and, without any progress, in its breaker.
            raise StoreTimeLimit(
                f"store time limit reached after {handled} of {len(messages)} messages",
                service=imap.SERVICE,
                progressed=handled > 0,
            )
    except ConfigError:
        # The deployment's fault (e.g. an unreadable EXTRA_CA_FILE), the same for every store:
        # counting it against each store's breaker would shut every mailbox out for no reason.
        raise
    except FetchStopped as exc:
        # Not the mailbox's fault: no breaker failure, no failure event; the next run resumes.
        outcome.status = "stopped"
        outcome.error = str(exc)
        outcome.error_type = exc.error_type
        return outcome
    except StoreTimeLimit as exc:
        outcome.status = "partial" if exc.progressed else "failed"
        outcome.error = str(exc)
        outcome.error_type = exc.error_type
        # Progress means the mailbox works and the rest is stored next run: only a fetch that
        # stores nothing counts against the breaker.
        _record_failure(db, service, store_id, exc, breaker=not exc.progressed)
        return outcome
    except WorkerError as exc:
        outcome.status = "failed"
        outcome.error = str(exc)
        outcome.error_type = exc.error_type
        _record_failure(db, service, store_id, exc)
        return outcome
    db.circuit_record(service, True)
    return outcome


def _ingest(
    db: Database,
    outcome: StoreOutcome,
    store_id: str,
    folder: str,
    uidvalidity: int,
    position: int,
    rows: list[dict[str, Any]],
) -> None:
    """Store `rows` and move the UID to `position`; a batch the database refuses for good is
    stored message by message, and a message it still refuses becomes an 'unstorable' stub."""
    try:
        _count(outcome, db.ingest_messages(store_id, folder, uidvalidity, position, rows))
        return
    except PermanentError as exc:
        if not rows:
            raise
        log.warning("store %s: batch refused (%s); storing message by message", store_id, exc)
    for index, row in enumerate(rows):
        # Each message covers the UIDs up to its own; the last one the whole batch.
        upto = position if index == len(rows) - 1 else int(rows[index + 1]["uid"]) - 1
        try:
            result = db.ingest_messages(store_id, folder, uidvalidity, upto, [row])
        except PermanentError as exc:
            log.warning("store %s: uid %s stored as a stub: %s", store_id, row.get("uid"), exc)
            # If even the stub is refused the fault is not in this message: the store fails.
            stub = unstorable_stub(row, exc)
            result = db.ingest_messages(store_id, folder, uidvalidity, upto, [stub])
            _record_unstorable(db, store_id, stub)
        _count(outcome, result)


def _record_unstorable(db: Database, store_id: str, stub: dict[str, Any]) -> None:
    # The stub says 'unstorable'; the event keeps the database's reason for whoever looks.
    detail = {"uid": stub.get("uid"), "message_id": stub["message_id"], "error": stub["detail"]}
    try:
        db.record_events(
            [{"store_id": store_id, "event_type": "fetch.message_unstorable", "detail": detail}]
        )
    except WorkerError:
        log.exception("could not record an unstorable message of store %s", store_id)


def _count(outcome: StoreOutcome, result: dict[str, Any]) -> None:
    outcome.stored += int(result.get("stored", 0))
    outcome.duplicates += int(result.get("duplicates", 0))
    outcome.skipped += int(result.get("skipped", 0))
    outcome.own_copies += int(result.get("own_copies", 0))
    outcome.job_ids.extend(str(j) for j in result.get("job_ids") or [])


def _record_window(
    db: Database,
    store_id: str,
    folder: str,
    batch: imap.FetchBatch,
    known_uidvalidity: int | None,
) -> None:
    """Record a first fetch's baseline or a UIDVALIDITY resync, with what was left alone."""
    if batch.window_start is None:
        return
    detail: dict[str, Any] = {
        "folder": folder,
        "uidvalidity": batch.uidvalidity,
        "since": batch.window_start.isoformat(),
        "last_uid": batch.highest_uid,
        "fetched": len(batch.messages),
        "left_alone": batch.left_alone,
    }
    if known_uidvalidity is None:
        event_type = "fetch.baseline"
    else:
        event_type = "fetch.uidvalidity_changed"
        detail["previous_uidvalidity"] = known_uidvalidity
    try:
        db.record_events([{"store_id": store_id, "event_type": event_type, "detail": detail}])
    except WorkerError:
        # The mail and the position are stored; a missing note must not fail the store.
        log.exception("could not record %s for store %s", event_type, store_id)


@contextmanager
def _time_limit(
    client: Any, deadline: float, stop_event: threading.Event | None = None
) -> Iterator[None]:
    """Cut the connection at the store's deadline, or once stop_event is set (shutdown); the
    fetch then fails as a timeout (FetchStopped for a stop).

    IMAP timeouts bound each socket read, not the whole fetch: a server that trickles bytes (or a
    slow link with a large message) would otherwise hold this store's thread, and with it the
    whole run and the single-run guard, for as long as it likes, and past gunicorn's grace.
    """
    finished = threading.Event()
    lock = threading.Lock()
    cause: list[str] = []

    def watch() -> None:
        while True:
            remaining = deadline - time.monotonic()
            if remaining > 0:
                # Clamped: a far-off deadline (a caller's "no limit") must not overflow the wait.
                wait = min(remaining, threading.TIMEOUT_MAX)
                if stop_event is not None:
                    # The stop event is shared with the run manager, which cannot wake this
                    # thread, so it is polled; `finished` ends the wait at once.
                    wait = min(wait, STOP_POLL_SECONDS)
                if finished.wait(wait):
                    return
                if stop_event is None or not stop_event.is_set():
                    continue
            with lock:
                if finished.is_set():
                    return
                cause.append("stop" if remaining > 0 else "deadline")
                _abort_connection(client)
            return

    watcher = threading.Thread(target=watch, name="fetch-time-limit", daemon=True)
    watcher.start()
    try:
        yield
    except WorkerError as exc:
        with lock:
            finished.set()
        if cause == ["stop"]:
            raise FetchStopped(
                "run stopped (shutdown) while reading the mailbox", service=imap.SERVICE
            ) from exc
        if cause == ["deadline"]:
            raise TransientError(
                "store time limit reached while reading the mailbox", service=imap.SERVICE
            ) from exc
        raise
    finally:
        with lock:
            finished.set()


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


def _record_failure(
    db: Database, service: str, store_id: str, exc: WorkerError, *, breaker: bool = True
) -> None:
    log.warning("fetch failed for store %s: %s", store_id, exc)
    try:
        if breaker:
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
