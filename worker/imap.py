"""The IMAP edge: the one place that opens a mailbox, and the incremental fetch over it.

Certificates are always verified (the system store plus EXTRA_CA_FILE), connect and read
timeouts are always set (imapclient has none by default), folders are opened read-only and bodies
fetched with BODY.PEEK so the store's \\Seen flags are never touched. Every failure leaves this
module as a worker.errors type.
"""

from __future__ import annotations

import imaplib
import ipaddress
import re
import ssl
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from imapclient import IMAPClient, SocketTimeout
from imapclient import exceptions as imap_exceptions
from imapclient.imapclient import SENT

from worker.errors import ConfigError, PermanentError, TransientError, WorkerError

SERVICE = "imap"
TlsMode = Literal["ssl", "starttls", "plain"]
TLS_MODES: tuple[str, ...] = ("ssl", "starttls", "plain")

SIZE_CHUNK = 500  # UIDs per RFC822.SIZE request; the answer is a few bytes per message
BODY_CHUNK_MESSAGES = 25  # messages per BODY.PEEK[] request
BODY_CHUNK_BYTES = 8 * 1024 * 1024  # bytes per BODY.PEEK[] request, so one answer stays small
HEADER_CHUNK = 100  # oversized messages per BODY.PEEK[HEADER] request
MAX_BATCH_BYTES = 100 * 1024 * 1024  # bytes of bodies per fetch_new_messages call

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


# -- pure helpers -------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback IP literals, the only hosts allowed without TLS."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_uids(found: Iterable[int], last_uid: int) -> list[int]:
    """UIDs strictly above last_uid, oldest first.

    A search for `n:*` always answers with the highest UID even when it is below n (RFC 3501
    6.4.8: `*` is the largest UID in use), so the server's answer must be filtered.
    """
    return sorted({int(uid) for uid in found if int(uid) > last_uid})


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
    if isinstance(exc, TimeoutError):
        return TransientError(f"{action}: timed out", service=SERVICE)
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = getattr(exc, "verify_message", None) or exc
        return TransientError(
            f"{action}: TLS certificate verification failed: {reason}", service=SERVICE
        )
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or exc
        return TransientError(f"{action}: TLS error: {reason}", service=SERVICE)
    if isinstance(exc, OSError):
        return TransientError(f"{action}: connection failed: {exc}", service=SERVICE)
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


def client_ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A verifying TLS context: the system's CAs plus the optional extra bundle."""
    context = ssl.create_default_context()
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            # The deployment's fault, not the mailbox's: no retry or breaker can fix it.
            raise ConfigError(f"EXTRA_CA_FILE {ca_file!r} cannot be loaded: {exc}") from exc
    return context


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
    if tls not in TLS_MODES:
        raise PermanentError(f"unknown IMAP TLS mode {tls!r}", service=SERVICE)
    if tls == "plain" and not is_loopback(host):
        raise PermanentError(
            f"IMAP without TLS is only allowed to loopback hosts, not {host!r}", service=SERVICE
        )
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
) -> FetchBatch:
    """The oldest `limit` messages with UID > last_uid (all of them from UID 1 after a
    UIDVALIDITY change); oversized ones come with their header only."""
    info = _select(client, folder)
    uidvalidity = int(info[b"UIDVALIDITY"])
    changed = known_uidvalidity is not None and int(known_uidvalidity) != uidvalidity
    start = 0 if changed else max(0, int(last_uid))
    exists = int(info.get(b"EXISTS", 0))
    uidnext = info.get(b"UIDNEXT")
    if exists == 0 or (uidnext is not None and int(uidnext) <= start + 1):
        # Nothing can be new: skip the search entirely (the common case on a quiet mailbox).
        return FetchBatch(uidvalidity, changed, [], start)

    with _imap_errors(f"search {folder}"):
        found = client.search(["UID", f"{start + 1}:*"])
    candidates = new_uids(found, start)
    taken = candidates[: max(0, limit)]
    has_more = len(candidates) > len(taken)
    if not taken:
        return FetchBatch(uidvalidity, changed, [], start)

    sizes: dict[int, int] = {}
    with _imap_errors(f"fetch sizes {folder}"):
        for chunk in _chunks(taken, SIZE_CHUNK):
            for uid, item in client.fetch(chunk, ["RFC822.SIZE"]).items():
                if uid in chunk and b"RFC822.SIZE" in item:
                    sizes[int(uid)] = int(item[b"RFC822.SIZE"])
    full, headers_only, left_from = plan_bodies(taken, sizes, max_bytes, max_batch_bytes)
    if left_from is not None:
        taken = [uid for uid in taken if uid < left_from]
        has_more = True

    data: dict[int, tuple[bytes, bool]] = {}
    with _imap_errors(f"fetch bodies {folder}"):
        for chunk in body_chunks(full, sizes):
            answer = client.fetch(chunk, ["BODY.PEEK[]"])
            for uid in chunk:
                body = _item(answer.get(uid), b"BODY[]")
                if body is not None:
                    data[uid] = (body, False)
        for chunk in _chunks(headers_only, HEADER_CHUNK):
            answer = client.fetch(chunk, ["BODY.PEEK[HEADER]"])
            for uid in chunk:
                header = _item(answer.get(uid), b"BODY[HEADER]")
                if header is not None:
                    data[uid] = (header, True)

    messages = [
        FetchedMessage(uid=uid, size=sizes[uid], data=data[uid][0], oversized=data[uid][1])
        for uid in sorted(data)
    ]
    # Expunged-meanwhile UIDs count as covered: they can never come back.
    return FetchBatch(uidvalidity, changed, messages, max(taken), has_more)


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
