"""The pure parts of worker.imap: UID filtering, the body plan, error classification."""

from __future__ import annotations

import imaplib
import ssl
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from imapclient import exceptions as imap_exceptions

from worker import imap, tls
from worker.errors import PermanentError, TransientError


def test_new_uids_filters_the_highest_uid_that_star_always_returns() -> None:
    # "UID 11:*" on a folder whose highest UID is 10 answers [10] (RFC 3501 6.4.8).
    assert imap.new_uids([10], last_uid=10) == []
    assert imap.new_uids([13, 11, 12, 11], last_uid=10) == [11, 12, 13]


def test_fetch_window_applies_only_to_a_first_fetch_or_a_new_uidvalidity() -> None:
    connected = datetime(2026, 3, 10, 12, tzinfo=UTC)
    resync = datetime(2026, 5, 1, tzinfo=UTC)
    assert imap.fetch_window(None, 7, connected, resync) == connected
    assert imap.fetch_window(6, 7, connected, resync) == resync
    assert imap.fetch_window(7, 7, connected, resync) is None
    assert imap.fetch_window(6, 7, connected, None) is None  # resync of the whole folder


def test_since_day_reaches_a_day_back_for_the_servers_time_zone() -> None:
    assert imap.since_day(datetime(2026, 3, 10, 0, 30, tzinfo=UTC)) == date(2026, 3, 9)
    # 23:30 in Sao Paulo is already the next day in UTC.
    brt = timezone(timedelta(hours=-3))
    assert imap.since_day(datetime(2026, 3, 9, 23, 30, tzinfo=brt)) == date(2026, 3, 9)


def test_arrived_in_window_compares_instants_to_the_whole_second() -> None:
    start = datetime(2026, 3, 10, 12, 0, 0, 700_000, tzinfo=UTC)
    brt = timezone(timedelta(hours=-3))
    dates = {
        1: datetime(2026, 3, 10, 11, 59, 59, tzinfo=UTC),  # before
        2: datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC),  # the same second: in
        3: datetime(2026, 3, 10, 9, 0, 5, tzinfo=brt),  # 12:00:05 UTC
        # imapclient's default: naive local time.
        4: datetime(2026, 3, 10, 12, 0, 1, tzinfo=UTC).astimezone().replace(tzinfo=None),
        5: datetime(2026, 3, 10, 11, 0, tzinfo=UTC).astimezone().replace(tzinfo=None),
    }
    # UID 6 has no date: expunged meanwhile.
    assert imap.arrived_in_window([1, 2, 3, 4, 5, 6], dates, start) == [2, 3, 4]


def test_plan_bodies_splits_oversized_and_respects_the_batch_budget() -> None:
    sizes = {1: 100, 2: 5000, 3: 300, 4: 400, 5: 100}
    full, headers, left_from = imap.plan_bodies([1, 2, 3, 4, 5], sizes, 1000, 10_000)
    assert (full, headers, left_from) == ([1, 3, 4, 5], [2], None)

    full, headers, left_from = imap.plan_bodies([1, 2, 3, 4, 5], sizes, 1000, 450)
    assert (full, headers, left_from) == ([1, 3], [2], 4)


def test_plan_bodies_always_takes_the_first_message_and_drops_expunged() -> None:
    full, headers, left_from = imap.plan_bodies([7, 8, 9], {7: 900, 9: 10}, 1000, 10)
    assert (full, headers, left_from) == ([7], [], 9)


def test_body_chunks_bound_count_and_bytes() -> None:
    sizes = {uid: 1 for uid in range(60)}
    assert [len(c) for c in imap.body_chunks(list(range(60)), sizes)] == [25, 25, 10]
    big = imap.BODY_CHUNK_BYTES // 2 + 1
    assert list(imap.body_chunks([1, 2, 3], {1: big, 2: big, 3: 1})) == [[1], [2, 3]]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("10.0.0.1", False),
        ("imap.example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert tls.is_loopback(host) is expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (imap_exceptions.LoginError("[AUTHENTICATIONFAILED] Auth failed."), PermanentError),
        (imap_exceptions.LoginError("[UNAVAILABLE] Temporary auth failure."), TransientError),
        (imap_exceptions.CapabilityError("Server does not support STARTTLS"), PermanentError),
        (imaplib.IMAP4.error("select failed: [NONEXISTENT] No mailbox: Nope"), PermanentError),
        (imaplib.IMAP4.error("fetch failed: [SERVERBUG] Internal error."), TransientError),
        (imaplib.IMAP4.error("[INUSE] Mailbox is locked"), TransientError),
        (imaplib.IMAP4.error("some failure with no response code"), TransientError),
        (imaplib.IMAP4.abort("socket error: EOF"), TransientError),
        (TimeoutError("timed out"), TransientError),
        (ConnectionRefusedError(111, "Connection refused"), TransientError),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), TransientError),
        (ssl.SSLError(1, "wrong version number"), TransientError),
    ],
)
def test_imap_failures_are_classified(exc: BaseException, expected: type) -> None:
    error = imap.classify_imap_error(exc, "login")
    assert type(error) is expected
    assert error.service == "imap"
    assert str(error).startswith("imap: login")


def test_classify_rejects_foreign_exceptions() -> None:
    with pytest.raises(TypeError):
        imap.classify_imap_error(KeyError("x"), "fetch")
