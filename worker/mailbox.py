"""The store's mailbox as the record (decision 0019): the IMAP writes that file our replies in
Sent, place held replies in Drafts and mark answered mail, and the read of the Sent folder that
finds replies a person sent from their own mail client.

Every write is keyed by a Message-ID and looked up first (SEARCH HEADER Message-ID), so doing it
twice changes nothing: a retried job never appends a second copy. Folders come from the store's
settings or from their SPECIAL-USE flag (RFC 6154); imapclient falls back to the usual names on
servers that announce none. The parsing of what the server answers is pure and separate from the
socket calls; every failure leaves this module as a worker.errors type.
"""

from __future__ import annotations

import imaplib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

from imapclient import IMAPClient
from imapclient.imapclient import DRAFTS, SENT

from worker import compose, imap
from worker.errors import PermanentError

SEEN = b"\\Seen"
ANSWERED = b"\\Answered"
DRAFT = b"\\Draft"
# Gmail (and Google Workspace) announce this capability; they file every message submitted over
# SMTP in "[Gmail]/Sent Mail" themselves, so a copy of ours would be a second one.
GMAIL_CAPABILITY = "X-GM-EXT-1"
SCAN_HEADERS = "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID IN-REPLY-TO REFERENCES FROM)]"
SCAN_CHUNK = 200  # Sent messages per header request


@dataclass(frozen=True)
class SentMessage:
    """The threading headers of one message in the Sent folder."""

    uid: int
    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    sender: str

    def as_json(self) -> dict[str, Any]:
        """The shape record_sent_scan takes."""
        return {
            "uid": self.uid,
            "message_id": self.message_id,
            "in_reply_to": self.in_reply_to,
            "references": list(self.references),
            "from": self.sender,
        }


@dataclass(frozen=True)
class SentBatch:
    """One incremental read of the Sent folder."""

    folder: str
    uidvalidity: int
    messages: list[SentMessage]
    highest_uid: int  # the next read starts after it
    baseline: bool  # first read (or a new UIDVALIDITY): older mail is left alone, never read


# -- pure helpers -------------------------------------------------------------------------------


def parse_sent_header(uid: int, raw: bytes) -> SentMessage:
    """The threading headers of a Sent message from its raw header block."""
    header = BytesHeaderParser(policy=compat32).parsebytes(raw)
    own = compose.message_ids([_text(header.get("Message-ID"))])
    parent = compose.message_ids([_text(header.get("In-Reply-To"))])
    references = compose.message_ids([_text(header.get("References"))])
    sender = " ".join(_text(header.get("From")).split())[:320]
    return SentMessage(
        uid=uid,
        message_id=own[0] if own else None,
        in_reply_to=parent[0] if parent else None,
        references=tuple(references),
        sender=sender,
    )


def _text(value: object) -> str:
    return "" if value is None else str(value)


def searchable(message_id: str) -> bool:
    """Whether a Message-ID can go into SEARCH HEADER as it is: printable ASCII without space,
    quote, backslash or braces (a customer's Message-ID ending in `{5}` would otherwise read
    as an IMAP literal and stall the command)."""
    wanted = message_id.strip()
    return bool(wanted) and all(0x21 <= ord(c) <= 0x7E and c not in '"\\{}' for c in wanted)


def usable_message_id(message_id: str) -> str:
    """A Message-ID fit for SEARCH HEADER, else a permanent error."""
    if not searchable(message_id):
        raise PermanentError(f"unusable Message-ID {message_id!r}", service=imap.SERVICE)
    return message_id.strip()


def draft_message_id(reply_id: str, support_email: str) -> str:
    """The Message-ID of a held reply's copy in Drafts: not the reply's own, so a copy in Sent
    with the reply's Message-ID still means our SMTP send (decision 0017)."""
    host = support_email.rsplit("@", 1)[-1].strip().strip(".").lower()
    return f"<draft-{reply_id}@{host}>"


# -- I/O ----------------------------------------------------------------------------------------


@contextmanager
def _errors(action: str) -> Iterator[None]:
    try:
        yield
    except (OSError, imaplib.IMAP4.error) as exc:
        raise imap.classify_imap_error(exc, action) from exc


def provider_files_sent(client: IMAPClient) -> bool:
    """Whether the server files SMTP-submitted mail in Sent itself (Gmail's X-GM-EXT-1)."""
    with _errors("capability"):
        return bool(client.has_capability(GMAIL_CAPABILITY))


def special_folder(client: IMAPClient, flag: bytes, configured: str | None) -> str | None:
    """The configured folder, else the one with this SPECIAL-USE flag (or its usual name)."""
    if configured:
        return configured
    with _errors("list folders"):
        folder = client.find_special_folder(flag)
    return str(folder) if folder is not None else None


def sent_folder(client: IMAPClient, configured: str | None) -> str | None:
    """The store's Sent folder (setting, SPECIAL-USE \\Sent, or a usual name), None if absent."""
    return special_folder(client, SENT, configured)


def drafts_folder(client: IMAPClient, configured: str | None) -> str | None:
    """The store's Drafts folder (setting, SPECIAL-USE \\Drafts, or a usual name)."""
    return special_folder(client, DRAFTS, configured)


def _open_for_writing(client: IMAPClient, folder: str) -> None:
    with _errors(f"select {folder}"):
        try:
            client.select_folder(folder)
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error:
            if not client.folder_exists(folder):
                raise PermanentError(
                    f"folder {folder!r} does not exist", service=imap.SERVICE
                ) from None
            raise


def uids_of(client: IMAPClient, folder: str, message_id: str) -> list[int]:
    """The UIDs of the messages in folder with this Message-ID (the folder is left selected)."""
    wanted = usable_message_id(message_id)
    _open_for_writing(client, folder)
    with _errors(f"search {folder}"):
        # HEADER search is a substring match; the angle brackets keep it exact enough.
        return sorted(int(uid) for uid in client.search(["HEADER", "Message-ID", wanted]))


def append_once(
    client: IMAPClient,
    folder: str,
    message_id: str,
    raw: bytes,
    flags: Sequence[bytes],
    when: datetime | None = None,
) -> bool:
    """APPEND raw to folder unless a message with this Message-ID is there; True if appended."""
    if uids_of(client, folder, message_id):
        return False
    with _errors(f"append {folder}"):
        client.append(folder, raw, flags=tuple(flags), msg_time=when)
    return True


def add_flags(client: IMAPClient, folder: str, message_id: str, flags: Iterable[bytes]) -> int:
    """Add flags to every message in folder with this Message-ID; how many there were."""
    uids = uids_of(client, folder, message_id)
    if uids:
        with _errors(f"store flags {folder}"):
            client.add_flags(uids, list(flags), silent=True)
    return len(uids)


def remove(client: IMAPClient, folder: str, message_id: str) -> int:
    """Delete the messages in folder with this Message-ID; how many there were.

    With UIDPLUS only those UIDs are expunged; without it they are only flagged \\Deleted (a
    plain EXPUNGE would also remove whatever else a person marked deleted there).
    """
    uids = uids_of(client, folder, message_id)
    if not uids:
        return 0
    with _errors(f"delete {folder}"):
        client.delete_messages(uids, silent=True)
        if client.has_capability("UIDPLUS"):
            client.uid_expunge(uids)
    return len(uids)


def read_sent(
    client: IMAPClient,
    folder: str,
    last_uid: int,
    known_uidvalidity: int | None,
    limit: int,
) -> SentBatch:
    """Sent messages with UID > last_uid (the oldest `limit`), with their threading headers.

    The first read of a folder, or one after a UIDVALIDITY change, reads nothing and starts from
    the folder's end: what a person sent before we watched the folder answers no held reply of
    ours (a held reply exists only after an earlier fetch, which read the folder's end then).
    """
    with _errors(f"select {folder}"):
        info = client.select_folder(folder, readonly=True)
    uidvalidity = int(info[b"UIDVALIDITY"])
    uidnext = info.get(b"UIDNEXT")
    if known_uidvalidity is None or int(known_uidvalidity) != uidvalidity:
        if uidnext is not None:
            top = int(uidnext) - 1
        else:
            with _errors(f"search {folder}"):
                top = max((int(u) for u in client.search(["UID", "*"])), default=0)
        return SentBatch(folder, uidvalidity, [], max(top, 0), baseline=True)
    start = max(0, int(last_uid))
    if int(info.get(b"EXISTS", 0)) == 0 or (uidnext is not None and int(uidnext) - 1 <= start):
        return SentBatch(folder, uidvalidity, [], start, baseline=False)
    with _errors(f"search {folder}"):
        found = imap.new_uids(client.search(["UID", f"{start + 1}:*"]), start)
    taken = found[: max(1, limit)]
    messages: list[SentMessage] = []
    key = SCAN_HEADERS.replace(".PEEK", "").encode()
    with _errors(f"fetch headers {folder}"):
        for offset in range(0, len(taken), SCAN_CHUNK):
            chunk = taken[offset : offset + SCAN_CHUNK]
            answer = client.fetch(chunk, [SCAN_HEADERS])
            for uid in chunk:
                raw = (answer.get(uid) or {}).get(key)
                if isinstance(raw, bytes | bytearray):
                    messages.append(parse_sent_header(uid, bytes(raw)))
    highest = taken[-1] if taken else start
    return SentBatch(folder, uidvalidity, messages, highest, baseline=False)
