"""The IMAP edge: the one place that opens a mailbox, and the incremental fetch over it.

Certificates are always verified (the system store plus EXTRA_CA_FILE), connect and read
timeouts are always set (imapclient has none by default), folders are opened read-only and bodies
fetched with BODY.PEEK so the store's \\Seen flags are never touched. A fetch can be limited to
mail that arrived since a given instant (SEARCH SINCE narrows by day, INTERNALDATE decides), so
a mailbox's history is skipped without being read. Every failure leaves this module as a
worker.errors type.
"""

from __future__ import annotations

import imaplib
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from imapclient import IMAPClient, SocketTimeout
from imapclient import exceptions as imap_exceptions
from imapclient.imapclient import SENT

from worker.errors import PermanentError, TransientError, WorkerError, classify_network_error
from worker.tls import client_ssl_context, require_tls_mode

SERVICE = "imap"

SIZE_CHUNK = 500  # UIDs per RFC822.SIZE request; the answer is a few bytes per message
BODY_CHUNK_MESSAGES = 25  # messages per BODY.PEEK[] request
BODY_CHUNK_BYTES = 8 * 1024 * 1024  # bytes per BODY.PEEK[] request, so one answer stays small
HEADER_CHUNK = 100  # oversized messages per BODY.PEEK[HEADER] request
MAX_BATCH_BYTES = 100 * 1024 * 1024  # bytes of bodies per fetch_new_messages call
# SEARCH SINCE compares calendar days in the server's own time zone (RFC 3501 6.4.4), which can
# be up to 14 hours from UTC: searching a day earlier never misses a message, and INTERNALDATE
# then decides precisely.
SINCE_SLACK = timedelta(days=1)

# Response codes (RFC 5530) that say "this will not work until someone changes something".
_PERMANENT_CODES = frozenset(
    {
        "AUTHENTICATIONFAILED",
        "AUTHORIZATIONFAILED",
        "EXPIRED",
        "PRIVACYREQUIRED",
        "CONTACTADMIN",
        "NOPERM",
        "NONEXISTENT",
        "CANNOT",
        "CLIENTBUG",
    }
)
_RESPONSE_CODE = re.compile(r"\[([A-Z-]+)")


@dataclass(frozen=True)
class FetchedMessage:
    """One new message: the whole raw message, or only its header when it is oversized."""

    uid: int
    size: int
    data: bytes
    oversized: bool


@dataclass(frozen=True)
class FetchBatch:
    """The result of one incremental fetch of a folder."""

    uidvalidity: int
    uidvalidity_changed: bool
    messages: list[FetchedMessage]
    # The last UID this batch covers; the next fetch starts after it.
    highest_uid: int
    # More new messages are waiting beyond the limit (or the byte budget).
    has_more: bool = False
    # Only mail that arrived at or after this instant was taken (a first fetch or a resync
    # after a UIDVALIDITY change); None for an ordinary incremental fetch.
    window_start: datetime | None = None
    # Messages at or below highest_uid left alone because they arrived before window_start.
    left_alone: int = 0


# -- pure helpers -------------------------------------------------------------------------------


def new_uids(found: Iterable[int], last_uid: int) -> list[int]:
    """UIDs strictly above last_uid, oldest first.

    A search for `n:*` always answers with the highest UID even when it is below n (RFC 3501
    6.4.8: `*` is the largest UID in use), so the server's answer must be filtered.
    """
    return sorted({int(uid) for uid in found if int(uid) > last_uid})


def fetch_window(
    known_uidvalidity: int | None,
    uidvalidity: int,
    arrived_since: datetime | None,
    resync_since: datetime | None,
) -> datetime | None:
    """The arrival time a fetch is limited to: arrived_since on the folder's first fetch,
    resync_since after a UIDVALIDITY change, None (every new UID) otherwise."""
    if known_uidvalidity is None:
        return arrived_since
    if int(known_uidvalidity) != int(uidvalidity):
        return resync_since
    return None


def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one is local time (imapclient's normalised INTERNALDATE)."""
    return moment.astimezone(UTC)


def since_day(window_start: datetime) -> date:
    """The SEARCH SINCE day that surely includes every message arrived since window_start."""
    return (as_utc(window_start) - SINCE_SLACK).date()


def arrived_in_window(
    uids: Sequence[int], dates: dict[int, datetime], window_start: datetime
) -> list[int]:
    """The UIDs (in the given order) whose INTERNALDATE is at or after window_start.

    INTERNALDATE has whole seconds, so the window starts at its whole second too: a message that
    arrived in the same second as the window start is in it. UIDs without a date were expunged.
    """
    start = as_utc(window_start).replace(microsecond=0)
    return [uid for uid in uids if uid in dates and as_utc(dates[uid]) >= start]


def plan_bodies(
    uids: Sequence[int], sizes: dict[int, int], max_bytes: int, max_batch_bytes: int
) -> tuple[list[int], list[int], int | None]:
    """Split UIDs (oldest first) into (full bodies, headers only, first UID left for later).

    A message over max_bytes is header-only (recorded and skipped, never retried). Full bodies
    stop at the batch byte budget, but the first one is always taken so a batch never stalls.
    UIDs missing from `sizes` were expunged meanwhile and are dropped.
    """
    full: list[int] = []
    headers: list[int] = []
    total = 0
    for uid in uids:
        if uid not in sizes:
            continue
        size = sizes[uid]
        if size > max_bytes:
            headers.append(uid)
            continue
        if full and total + size > max_batch_bytes:
            return full, headers, uid
        full.append(uid)
        total += size
    return full, headers, None


def body_chunks(uids: Sequence[int], sizes: dict[int, int]) -> Iterator[list[int]]:
    """Consecutive groups of UIDs, each within BODY_CHUNK_MESSAGES and BODY_CHUNK_BYTES."""
    chunk: list[int] = []
    total = 0
    for uid in uids:
        if chunk and (len(chunk) >= BODY_CHUNK_MESSAGES or total + sizes[uid] > BODY_CHUNK_BYTES):
            yield chunk
            chunk, total = [], 0
        chunk.append(uid)
        total += sizes[uid]
    if chunk:
        yield chunk


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def classify_imap_error(exc: BaseException, action: str) -> WorkerError:
    """The typed error for a failure while doing `action` (connect, login, fetch...)."""
    if isinstance(exc, WorkerError):
        return exc
    network = classify_network_error(exc, action, SERVICE)
    if network is not None:
        return network
    if isinstance(exc, imaplib.IMAP4.abort):
        return TransientError(f"{action}: connection lost: {exc}", service=SERVICE)
    text = _exception_text(exc)
    match = _RESPONSE_CODE.search(text)
    code = match.group(1) if match else None
    if isinstance(exc, imap_exceptions.LoginError):
        if code == "UNAVAILABLE":
            return TransientError(f"{action}: server unavailable: {text}", service=SERVICE)
        return PermanentError(f"{action}: login rejected: {text}", service=SERVICE)
    if isinstance(exc, imap_exceptions.CapabilityError):
        return PermanentError(f"{action}: {text}", service=SERVICE)
    if isinstance(exc, imaplib.IMAP4.error):
        if code in _PERMANENT_CODES:
            return PermanentError(f"{action}: {text}", service=SERVICE)
        # UNAVAILABLE, INUSE, LIMIT, SERVERBUG, or no code at all: a retry is the safer bet,
        # and the store's circuit breaker bounds how often it is tried.
        return TransientError(f"{action}: {text}", service=SERVICE)
    raise TypeError(f"not an IMAP failure: {exc!r}")


def _exception_text(exc: BaseException) -> str:
    parts = [a.decode(errors="replace") if isinstance(a, bytes) else str(a) for a in exc.args]
    return " ".join(parts) or type(exc).__name__


@contextmanager
def _imap_errors(action: str) -> Iterator[None]:
    try:
        yield
    except (OSError, imaplib.IMAP4.error) as exc:
        raise classify_imap_error(exc, action) from exc


# -- I/O ----------------------------------------------------------------------------------------


def open_mailbox(
    host: str,
    port: int,
    tls: str,
    username: str,
    password: str,
    *,
    timeout_seconds: float,
    ca_file: str | None = None,
) -> IMAPClient:
    """Connect and log in; the client is a context manager that logs out on exit."""
    require_tls_mode(tls, host, SERVICE)
    context = client_ssl_context(ca_file)
    timeout = SocketTimeout(connect=timeout_seconds, read=timeout_seconds)
    with _imap_errors("connect"):
        client = IMAPClient(
            host, port, ssl=tls == "ssl", ssl_context=context, timeout=timeout, use_uid=True
        )
    try:
        if tls == "starttls":
            with _imap_errors("starttls"):
                # Never fall back to plaintext: a server without STARTTLS is misconfigured.
                if not client.has_capability("STARTTLS"):
                    raise PermanentError("server does not offer STARTTLS", service=SERVICE)
                client.starttls(context)
        with _imap_errors("login"):
            client.login(username, password)
    except BaseException:
        _close_quietly(client)
        raise
    return client


def _close_quietly(client: IMAPClient) -> None:
    try:
        client.shutdown()
    except Exception:  # noqa: S110 - the connection is already being abandoned
        pass


def fetch_new_messages(
    client: IMAPClient,
    folder: str,
    last_uid: int,
    known_uidvalidity: int | None,
    limit: int,
    max_bytes: int,
    *,
    max_batch_bytes: int = MAX_BATCH_BYTES,
    arrived_since: datetime | None = None,
    resync_since: datetime | None = None,
) -> FetchBatch:
    """The oldest `limit` messages with UID > last_uid; oversized ones come with their header only.

    On the folder's first fetch (known_uidvalidity None) only mail that arrived since
    `arrived_since` is taken, and after a UIDVALIDITY change (which starts again from UID 1) only
    mail since `resync_since`; older mail is skipped without being read, and the position jumps
    past it. Either left None means every message counts.
    """
    info = _select(client, folder)
    uidvalidity = int(info[b"UIDVALIDITY"])
    changed = known_uidvalidity is not None and int(known_uidvalidity) != uidvalidity
    start = 0 if changed else max(0, int(last_uid))
    window = fetch_window(known_uidvalidity, uidvalidity, arrived_since, resync_since)
    exists = int(info.get(b"EXISTS", 0))
    uidnext = info.get(b"UIDNEXT")
    # Every UID up to UIDNEXT-1 was assigned before the SELECT, so the search below sees it.
    top = int(uidnext) - 1 if uidnext is not None else None
    if exists == 0 or (top is not None and top <= start):
        # Nothing can be new: skip the search entirely (the common case on a quiet mailbox).
        position = max(start, top) if window is not None and top is not None else start
        return FetchBatch(uidvalidity, changed, [], position, window_start=window)

    criteria: list[Any] = ["UID", f"{start + 1}:*"]
    if window is not None:
        # The server narrows by day, so a mailbox of years costs one search, not a full scan.
        criteria += ["SINCE", since_day(window)]
    with _imap_errors(f"search {folder}"):
        found = client.search(criteria)
    candidates = new_uids(found, start)

    sizes: dict[int, int] = {}
    examined: list[int] = []
    if window is None:
        recent = candidates
        _fetch_sizes(client, folder, candidates[: max(0, limit)], sizes, None)
    else:
        dates: dict[int, datetime] = {}
        recent = []
        # Stop once one message beyond the limit is known: it is where the next run starts.
        while len(examined) < len(candidates) and len(recent) <= max(0, limit):
            part = candidates[len(examined) : len(examined) + SIZE_CHUNK]
            _fetch_sizes(client, folder, part, sizes, dates)
            recent.extend(arrived_in_window(part, dates, window))
            examined.extend(part)
    taken = recent[: max(0, limit)]
    next_uid = recent[len(taken)] if len(recent) > len(taken) else None

    full, headers_only, left_from = plan_bodies(taken, sizes, max_bytes, max_batch_bytes)
    if left_from is not None:
        taken = [uid for uid in taken if uid < left_from]
        next_uid = left_from

    if next_uid is not None:
        # Everything below the first message left for later is taken, expunged or too old.
        highest = next_uid - 1
    elif window is not None:
        # Nothing in the window is left: the whole folder as it was at SELECT is covered.
        folder_top = top if top is not None else _highest_uid(client, folder, start)
        highest = max([start, folder_top, *taken])
    else:
        highest = max(taken, default=start)
    left_alone = 0
    if window is not None:
        # Those before the SINCE day never matched the search, and those read and found too old.
        in_window = set(recent)
        left_alone = max(0, exists - len(candidates)) + sum(
            1 for uid in examined if uid <= highest and uid not in in_window
        )

    data: dict[int, tuple[bytes, bool]] = {}
    with _imap_errors(f"fetch bodies {folder}"):
        for chunk in body_chunks(full, sizes):
            answer = client.fetch(chunk, ["BODY.PEEK[]"])
            for uid in chunk:
                body = _item(answer.get(uid), b"BODY[]")
                if body is not None:
                    data[uid] = (body, False)
        for header_uids in _chunks(headers_only, HEADER_CHUNK):
            answer = client.fetch(header_uids, ["BODY.PEEK[HEADER]"])
            for uid in header_uids:
                header = _item(answer.get(uid), b"BODY[HEADER]")
                if header is not None:
                    data[uid] = (header, True)

    messages = [
        FetchedMessage(uid=uid, size=sizes[uid], data=data[uid][0], oversized=data[uid][1])
        for uid in sorted(data)
    ]
    # Expunged-meanwhile UIDs count as covered: they can never come back.
    return FetchBatch(
        uidvalidity,
        changed,
        messages,
        highest,
        next_uid is not None,
        window_start=window,
        left_alone=left_alone,
    )


def _fetch_sizes(
    client: IMAPClient,
    folder: str,
    uids: Sequence[int],
    sizes: dict[int, int],
    dates: dict[int, datetime] | None,
) -> None:
    """Fill sizes (and dates, when asked: INTERNALDATE rides along in the same request)."""
    items = ["RFC822.SIZE"] if dates is None else ["INTERNALDATE", "RFC822.SIZE"]
    with _imap_errors(f"fetch sizes {folder}"):
        for chunk in _chunks(uids, SIZE_CHUNK):
            wanted = set(chunk)
            for uid, item in client.fetch(chunk, items).items():
                if uid not in wanted or b"RFC822.SIZE" not in item:
                    continue
                sizes[int(uid)] = int(item[b"RFC822.SIZE"])
                if dates is not None and isinstance(item.get(b"INTERNALDATE"), datetime):
                    dates[int(uid)] = item[b"INTERNALDATE"]


def _highest_uid(client: IMAPClient, folder: str, default: int) -> int:
    """The folder's highest UID, for servers whose SELECT answer lacks UIDNEXT."""
    with _imap_errors(f"search {folder}"):
        return max((int(uid) for uid in client.search(["UID", "*"])), default=default)


def _select(client: IMAPClient, folder: str) -> dict[bytes, Any]:
    """Open folder read-only (EXAMINE): nothing we do can change its flags."""
    with _imap_errors(f"select {folder}"):
        try:
            return dict(client.select_folder(folder, readonly=True))
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error:
            # imaplib drops the [NONEXISTENT] code from the error; ask instead, since a missing
            # folder is a store set-up problem that no retry fixes.
            if not client.folder_exists(folder):
                raise PermanentError(f"folder {folder!r} does not exist", service=SERVICE) from None
            raise


def _item(item: dict[bytes, Any] | None, key: bytes) -> bytes | None:
    if item is None:
        return None
    value = item.get(key)
    return bytes(value) if isinstance(value, bytes | bytearray) else None


def sent_folder(client: IMAPClient) -> str | None:
    """The store's Sent folder (SPECIAL-USE \\Sent, else a usual name), None when absent."""
    with _imap_errors("list folders"):
        folder = client.find_special_folder(SENT)
    return str(folder) if folder is not None else None


def find_message_id(client: IMAPClient, folder: str, message_id: str) -> bool:
    """Whether a message with this Message-ID is in folder (resolves an in-doubt send)."""
    wanted = message_id.strip()
    if not wanted or any(c in wanted for c in '\r\n"\\'):
        raise PermanentError(f"unusable Message-ID {message_id!r}", service=SERVICE)
    _select(client, folder)
    with _imap_errors(f"search {folder}"):
        # HEADER search is a substring match; the angle brackets keep it exact enough.
        return bool(client.search(["HEADER", "Message-ID", wanted]))
