"""The pure parts of the mailbox as the record (decision 0019): what a reply's state asks of the
mailbox, the store's settings, the copies we file, and the Sent scan's header parsing."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy

import pytest

from worker.errors import PermanentError
from worker.mailbox import (
    draft_message_id,
    parse_sent_header,
    read_sent,
    searchable,
    usable_message_id,
)
from worker.mailbox_record import RecordPlan, plan_for, reply_copy
from worker.models import MailboxSettings

DEFAULTS = MailboxSettings()


def test_a_store_row_without_the_columns_gets_the_table_defaults() -> None:
    assert MailboxSettings.from_store({}) == MailboxSettings("auto", True, True, None, None)
    row = {
        "mailbox_sent": "never",
        "mailbox_drafts": False,
        "mailbox_mark_answered": False,
        "mailbox_sent_folder": "Enviados",
        "mailbox_drafts_folder": "",
    }
    assert MailboxSettings.from_store(row) == MailboxSettings(
        "never", False, False, "Enviados", None
    )
    assert MailboxSettings.from_store({"mailbox_sent": "bogus"}).sent == "auto"


def test_a_sent_reply_is_filed_and_its_mail_marked_answered() -> None:
    assert plan_for("sent", None, DEFAULTS) == RecordPlan(file_sent=True, mark_answered=True)


def test_a_reply_a_person_sent_from_the_console_also_leaves_drafts() -> None:
    plan = plan_for("sent", None, DEFAULTS, by_person=True)
    assert plan == RecordPlan(file_sent=True, mark_answered=True, remove_draft=True)


def test_a_held_reply_goes_to_drafts_unless_its_delivery_is_in_doubt() -> None:
    assert plan_for("held", "needs_human", DEFAULTS) == RecordPlan(place_draft=True)
    # In doubt it may have reached the customer: a draft would invite a second send.
    assert plan_for("held", "delivery_in_doubt", DEFAULTS) == RecordPlan(remove_draft=True)


@pytest.mark.parametrize("status", ["drafted", "sending", "discarded", "superseded", "failed"])
def test_a_reply_that_left_held_takes_its_draft_out(status: str) -> None:
    assert plan_for(status, None, DEFAULTS) == RecordPlan(remove_draft=True)


def test_settings_switch_each_part_off() -> None:
    off = MailboxSettings(sent="never", drafts=False, mark_answered=False)
    for status in ("sent", "held", "discarded", "superseded"):
        assert plan_for(status, "needs_human", off).empty
    only_flags = MailboxSettings(sent="never", drafts=False)
    assert plan_for("sent", None, only_flags) == RecordPlan(mark_answered=True)


REPLY = {
    "id": "0190f0c8-0000-7000-8000-000000000001",
    "smtp_message_id": "<reply-0190f0c8-0000-7000-8000-000000000002@loja.test>",
    "to_address": "ana@example.com",
    "subject": "Onde está meu pedido?",
    "in_reply_to": "<ana-1@example.com>",
    "references": ["<ana-0@example.com>", "<ana-1@example.com>"],
    "body_text": "Olá Ana, seu pedido #1001 chega amanhã.",
    "sent_at": datetime(2026, 12, 1, 12, 30, tzinfo=UTC),
}
STORE = {"support_email": "Ajuda@Loja.test", "name": "Loja Exemplo"}


def test_the_sent_copy_is_the_reply_as_sent() -> None:
    message_id, raw = reply_copy(REPLY, STORE, draft=False)
    copy = message_from_bytes(raw)
    assert message_id == copy["Message-ID"] == REPLY["smtp_message_id"]
    assert copy["In-Reply-To"] == "<ana-1@example.com>"
    assert copy["Auto-Submitted"] == "auto-replied"
    assert copy["Date"] == "Tue, 01 Dec 2026 12:30:00 +0000"
    assert b"\r\n" in raw


def test_the_draft_is_a_persons_message_with_its_own_message_id() -> None:
    message_id, raw = reply_copy(REPLY, STORE, draft=True)
    copy = message_from_bytes(raw, policy=policy.default)
    assert message_id == copy["Message-ID"] == f"<draft-{REPLY['id']}@loja.test>"
    assert message_id != REPLY["smtp_message_id"]  # a Sent copy still means our SMTP send
    assert copy["Auto-Submitted"] is None and copy["X-Auto-Response-Suppress"] is None
    assert copy["To"] == "ana@example.com" and copy["Subject"] == "Re: Onde está meu pedido?"


def test_draft_message_ids_use_the_support_domain() -> None:
    assert draft_message_id("abc", "help@Shop.Test.") == "<draft-abc@shop.test>"


@pytest.mark.parametrize(
    "bad", ["", "  ", '<a"b@x>', "<a\r\nb@x>", "<ação@x>", "<a b@x>", "<a\\b@x>", "x{5}"]
)
def test_message_ids_that_cannot_be_searched_for_are_refused(bad: str) -> None:
    assert not searchable(bad)
    with pytest.raises(PermanentError):
        usable_message_id(bad)


def test_ordinary_message_ids_are_searched_for_as_they_are() -> None:
    assert usable_message_id(" <reply-1.2+x=y@loja.test> ") == "<reply-1.2+x=y@loja.test>"


def test_the_sent_scan_reads_the_threading_headers() -> None:
    raw = (
        b"Message-ID: <maria-1@loja.test>\r\n"
        b"In-Reply-To: <ana-1@example.com>\r\n"
        b"References: <ana-0@example.com>\r\n <ana-1@example.com>\r\n"
        b"From: =?utf-8?q?Maria_Sim=C3=A3o?= <help@loja.test>\r\n\r\n"
    )
    found = parse_sent_header(7, raw)
    assert found.uid == 7
    assert found.message_id == "<maria-1@loja.test>"
    assert found.in_reply_to == "<ana-1@example.com>"
    assert found.references == ("<ana-0@example.com>", "<ana-1@example.com>")
    assert "help@loja.test" in found.sender
    assert found.as_json()["references"] == ["<ana-0@example.com>", "<ana-1@example.com>"]


def test_a_sent_message_without_threading_headers_answers_nothing() -> None:
    found = parse_sent_header(3, b"From: someone@loja.test\r\nSubject: hello\r\n\r\n")
    assert found.message_id is None and found.in_reply_to is None and found.references == ()


class SentFolder:
    """The part of IMAPClient that mailbox.read_sent uses, over an in-memory Sent folder."""

    def __init__(self, headers: dict[int, bytes], uidvalidity: int = 9) -> None:
        self.headers = headers
        self.uidvalidity = uidvalidity
        self.fetched: list[list[int]] = []

    def select_folder(self, folder: str, readonly: bool = False) -> dict[bytes, object]:
        assert readonly, "the Sent folder is only read"
        return {
            b"UIDVALIDITY": self.uidvalidity,
            b"EXISTS": len(self.headers),
            b"UIDNEXT": max(self.headers, default=0) + 1,
        }

    def search(self, criteria: list[str]) -> list[int]:
        assert criteria[0] == "UID"
        start = int(criteria[1].split(":")[0])
        # `n:*` always answers the highest UID too (RFC 3501), even when it is below n.
        return sorted({u for u in self.headers if u >= start} | {max(self.headers)})

    def fetch(self, uids: list[int], items: list[str]) -> dict[int, dict[bytes, bytes]]:
        self.fetched.append(list(uids))
        key = items[0].replace(".PEEK", "").encode()
        return {u: {key: self.headers[u]} for u in uids}


def header(n: int) -> bytes:
    return f"Message-ID: <m{n}@loja.test>\r\nIn-Reply-To: <c{n}@x.test>\r\n\r\n".encode()


def test_the_first_read_of_sent_starts_at_its_end_without_reading_history() -> None:
    folder = SentFolder({n: header(n) for n in range(1, 6)})
    batch = read_sent(folder, "Sent", 0, None, 100)
    assert (batch.baseline, batch.messages, batch.highest_uid) == (True, [], 5)
    assert folder.fetched == []


def test_later_reads_take_only_new_uids_oldest_first_within_the_limit() -> None:
    folder = SentFolder({n: header(n) for n in range(1, 9)})
    batch = read_sent(folder, "Sent", 5, 9, 2)
    assert [m.uid for m in batch.messages] == [6, 7] and batch.highest_uid == 7
    assert batch.messages[0].in_reply_to == "<c6@x.test>"
    rest = read_sent(folder, "Sent", 7, 9, 2)
    assert [m.uid for m in rest.messages] == [8] and rest.highest_uid == 8
    quiet = read_sent(folder, "Sent", 8, 9, 2)
    assert (quiet.messages, quiet.highest_uid, quiet.baseline) == ([], 8, False)
    assert folder.fetched == [[6, 7], [8]]  # the quiet read fetched nothing


def test_a_new_uidvalidity_starts_the_sent_position_afresh() -> None:
    folder = SentFolder({n: header(n) for n in range(1, 4)}, uidvalidity=10)
    batch = read_sent(folder, "Sent", 40, 9, 100)
    assert (batch.baseline, batch.highest_uid, batch.uidvalidity) == (True, 3, 10)


def test_a_reply_that_cannot_be_written_fails_for_good() -> None:
    broken = {**REPLY, "to_address": "not an address <"}
    with pytest.raises(PermanentError):
        reply_copy(broken, STORE, draft=True)
