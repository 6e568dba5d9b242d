"""worker.imap against a real Dovecot: TLS modes, credentials, timeouts, incremental fetch."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from imapclient import IMAPClient

from tests.support.mail_servers import MailUser
from worker import imap
from worker.devstack.dovecot import DovecotServer
from worker.devstack.tls import TestCA, create_test_ca
from worker.errors import ConfigError, PermanentError, TransientError

pytestmark = pytest.mark.integration

TIMEOUT = 20.0  # seconds; generous for a loaded CI box, never reached on success


def make_message(n: int, *, tag: str = "m", body: str = "Hello, where is my order?") -> bytes:
    return (
        f"From: Customer {n} <customer{n}@example.com>\r\n"
        f"To: support@shop.test\r\n"
        f"Subject: Question {n}\r\n"
        f"Message-ID: <{tag}{n}@example.com>\r\n"
        f"Date: Tue, 04 Mar 2025 12:00:00 +0000\r\n"
        f"\r\n{body}\r\n"
    ).encode()


def open_user(
    dovecot: DovecotServer, user: MailUser, tls: str = "ssl", ca_file: Path | None = None
) -> IMAPClient:
    port = dovecot.imaps_port if tls == "ssl" else dovecot.imap_port
    return imap.open_mailbox(
        dovecot.host,
        port,
        tls,
        user.name,
        user.password,
        timeout_seconds=TIMEOUT,
        ca_file=str(ca_file or dovecot.ca.ca_file),
    )


def message_ids(batch: imap.FetchBatch) -> list[str]:
    ids = []
    for message in batch.messages:
        ids.append(message.data.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode())
    return ids


@pytest.mark.parametrize("tls", ["ssl", "starttls", "plain"])
def test_each_tls_mode_logs_in_and_fetches(
    dovecot: DovecotServer, mail_user: MailUser, tls: str
) -> None:
    dovecot.deliver(mail_user.name, [make_message(1), make_message(2)])

    with open_user(dovecot, mail_user, tls) as client:
        batch = imap.fetch_new_messages(client, "INBOX", 0, None, limit=50, max_bytes=10_000)

    assert message_ids(batch) == ["<m1@example.com>", "<m2@example.com>"]
    assert [m.uid for m in batch.messages] == [1, 2]
    assert batch.messages[0].data == make_message(1)
    assert batch.messages[0].size == len(make_message(1))
    assert batch.highest_uid == 2
    assert batch.uidvalidity == dovecot.status(mail_user.name).uidvalidity
    assert not batch.uidvalidity_changed
    assert not batch.has_more


def test_starttls_session_is_encrypted(dovecot: DovecotServer, mail_user: MailUser) -> None:
    with open_user(dovecot, mail_user, "starttls") as client:
        assert isinstance(client.socket(), ssl.SSLSocket)


def test_plain_is_refused_for_remote_hosts_before_connecting(mail_user: MailUser) -> None:
    with pytest.raises(PermanentError, match="only allowed to loopback"):
        imap.open_mailbox(
            "imap.example.com", 143, "plain", mail_user.name, mail_user.password,
            timeout_seconds=TIMEOUT,
        )


def test_unknown_tls_mode_is_permanent(dovecot: DovecotServer, mail_user: MailUser) -> None:
    with pytest.raises(PermanentError, match="unknown IMAP TLS mode"):
        open_user(dovecot, mail_user, "tls1.0")


def test_wrong_password_is_permanent(dovecot: DovecotServer, mail_user: MailUser) -> None:
    with pytest.raises(PermanentError) as caught:
        imap.open_mailbox(
            dovecot.host, dovecot.imaps_port, "ssl", mail_user.name, "wrong-password",
            timeout_seconds=TIMEOUT, ca_file=str(dovecot.ca.ca_file),
        )
    assert caught.value.service == "imap"
    assert "AUTHENTICATIONFAILED" in str(caught.value)


@pytest.mark.parametrize("tls", ["ssl", "starttls"])
def test_untrusted_certificate_is_rejected(
    dovecot: DovecotServer, mail_user: MailUser, tls: str, tmp_path: Path
) -> None:
    stranger = create_test_ca(tmp_path / "other-ca", name="Some Other CA")
    port = dovecot.imaps_port if tls == "ssl" else dovecot.imap_port
    for ca_file in (None, str(stranger.ca_file)):
        with pytest.raises(TransientError, match="certificate verification failed"):
            imap.open_mailbox(
                dovecot.host, port, tls, mail_user.name, mail_user.password,
                timeout_seconds=TIMEOUT, ca_file=ca_file,
            )


def test_unreadable_extra_ca_file_is_a_config_error(
    dovecot: DovecotServer, mail_user: MailUser, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="EXTRA_CA_FILE"):
        open_user(dovecot, mail_user, ca_file=tmp_path / "missing.pem")


def test_connection_refused_is_transient(mail_user: MailUser) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with pytest.raises(TransientError, match="connection failed"):
        imap.open_mailbox(
            "127.0.0.1", closed_port, "ssl", mail_user.name, mail_user.password,
            timeout_seconds=TIMEOUT,
        )


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) but never says a word."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def test_server_that_never_greets_times_out(silent_server: int, mail_user: MailUser) -> None:
    with pytest.raises(TransientError, match="timed out"):
        imap.open_mailbox(
            "127.0.0.1", silent_server, "plain", mail_user.name, mail_user.password,
            timeout_seconds=0.5,
        )


def test_rerun_fetches_nothing_and_the_star_range_answer_is_filtered(
    dovecot: DovecotServer, mail_user: MailUser
) -> None:
    dovecot.deliver(mail_user.name, [make_message(n) for n in (1, 2, 3)])
    with dovecot.client(mail_user.name) as admin:
        admin.select_folder("INBOX")
        admin.delete_messages([3])
        admin.expunge()
    # UIDNEXT is 4 but the highest UID is 2: "UID 3:*" answers 2, which is not new.
    with open_user(dovecot, mail_user) as client:
        first = imap.fetch_new_messages(client, "INBOX", 0, None, limit=50, max_bytes=10_000)
        again = imap.fetch_new_messages(
            client, "INBOX", 2, first.uidvalidity, limit=50, max_bytes=10_000
        )
        after_all = imap.fetch_new_messages(
            client, "INBOX", 3, first.uidvalidity, limit=50, max_bytes=10_000
        )

    assert [m.uid for m in first.messages] == [1, 2]
    assert again.messages == [] and again.highest_uid == 2
    assert after_all.messages == [] and after_all.highest_uid == 3


def test_limit_takes_the_oldest_first_and_continues(
    dovecot: DovecotServer, mail_user: MailUser
) -> None:
    dovecot.deliver(mail_user.name, [make_message(n) for n in range(1, 6)])
    with open_user(dovecot, mail_user) as client:
        first = imap.fetch_new_messages(client, "INBOX", 0, None, limit=2, max_bytes=10_000)
        second = imap.fetch_new_messages(
            client, "INBOX", first.highest_uid, first.uidvalidity, limit=2, max_bytes=10_000
        )

    assert [m.uid for m in first.messages] == [1, 2] and first.has_more
    assert [m.uid for m in second.messages] == [3, 4] and second.has_more
    assert second.highest_uid == 4


def test_fetch_leaves_seen_flags_alone(dovecot: DovecotServer, mail_user: MailUser) -> None:
    dovecot.deliver(mail_user.name, [make_message(1)])
    dovecot.deliver(mail_user.name, [make_message(2)], flags=["\\Seen"])
    with open_user(dovecot, mail_user) as client:
        batch = imap.fetch_new_messages(client, "INBOX", 0, None, limit=50, max_bytes=10_000)
    assert len(batch.messages) == 2

    flags = {m.uid: set(m.flags) for m in dovecot.list_folder(mail_user.name)}
    assert "\\Seen" not in flags[1]
    assert "\\Seen" in flags[2]


def test_oversized_message_comes_with_its_header_only(
    dovecot: DovecotServer, mail_user: MailUser
) -> None:
    big = make_message(2, body="x" * 50_000)
    dovecot.deliver(mail_user.name, [make_message(1), big, make_message(3)])
    with open_user(dovecot, mail_user) as client:
        batch = imap.fetch_new_messages(client, "INBOX", 0, None, limit=50, max_bytes=10_000)

    assert [(m.uid, m.oversized) for m in batch.messages] == [(1, False), (2, True), (3, False)]
    oversized = batch.messages[1]
    assert oversized.size == len(big)
    assert oversized.data.startswith(b"From: Customer 2")
    assert b"Message-ID: <m2@example.com>" in oversized.data
    assert b"xxxx" not in oversized.data
    assert batch.highest_uid == 3


def test_uidvalidity_change_starts_again_from_the_first_uid(
    dovecot: DovecotServer, mail_user: MailUser
) -> None:
    dovecot.deliver(mail_user.name, [make_message(n) for n in (1, 2, 3)])
    with open_user(dovecot, mail_user) as client:
        before = imap.fetch_new_messages(client, "INBOX", 0, None, limit=50, max_bytes=10_000)
    dovecot.deliver(mail_user.name, [make_message(4)])
    new_validity = dovecot.recreate_folder(mail_user.name)

    with open_user(dovecot, mail_user) as client:
        after = imap.fetch_new_messages(
            client, "INBOX", before.highest_uid, before.uidvalidity, limit=50, max_bytes=10_000
        )
        steady = imap.fetch_new_messages(
            client, "INBOX", after.highest_uid, after.uidvalidity, limit=50, max_bytes=10_000
        )

    assert before.highest_uid == 3
    assert after.uidvalidity == new_validity != before.uidvalidity
    assert after.uidvalidity_changed
    assert [m.uid for m in after.messages] == [1, 2, 3, 4]
    assert message_ids(after) == [f"<m{n}@example.com>" for n in (1, 2, 3, 4)]
    assert not steady.uidvalidity_changed and steady.messages == []


def test_first_fetch_with_a_window_skips_old_mail_and_covers_the_expunged_tail(
    dovecot: DovecotServer, mail_user: MailUser
) -> None:
    now = datetime.now(UTC)
    dated = [(make_message(n, tag="win"), now - timedelta(days=90, hours=n)) for n in (1, 2, 3)]
    dated += [(make_message(n, tag="win"), now + timedelta(seconds=n)) for n in (4, 5)]
    with dovecot.client(mail_user.name) as admin:
        admin.multiappend("INBOX", [{"msg": raw, "date": when} for raw, when in dated])
        admin.select_folder("INBOX")
        admin.delete_messages([5])
        admin.expunge()

    with open_user(dovecot, mail_user) as client:
        batch = imap.fetch_new_messages(
            client, "INBOX", 0, None, limit=50, max_bytes=10_000, arrived_since=now
        )

    assert message_ids(batch) == ["<win4@example.com>"]
    assert batch.window_start == now
    # UID 5 is gone, but UIDNEXT says it existed: the next fetch starts after it.
    assert batch.highest_uid == 5 and not batch.has_more
    assert batch.left_alone == 3


def test_missing_folder_is_permanent(dovecot: DovecotServer, mail_user: MailUser) -> None:
    with (
        open_user(dovecot, mail_user) as client,
        pytest.raises(PermanentError, match="does not exist"),
    ):
        imap.fetch_new_messages(client, "No/Such/Folder", 0, None, limit=50, max_bytes=10_000)


def test_find_message_id_in_the_sent_folder(dovecot: DovecotServer, mail_user: MailUser) -> None:
    dovecot.append(mail_user.name, make_message(7, tag="reply-"), folder="Sent", flags=["\\Seen"])
    with open_user(dovecot, mail_user) as client:
        sent = imap.sent_folder(client)
        assert sent == "Sent"
        assert imap.find_message_id(client, sent, "<reply-7@example.com>")
        assert not imap.find_message_id(client, sent, "<reply-8@example.com>")
        assert not imap.find_message_id(client, "INBOX", "<reply-7@example.com>")


def test_5000_message_mailbox_fetches_only_the_10_new(
    dovecot: DovecotServer, mail_user: MailUser, capsys: pytest.CaptureFixture[str]
) -> None:
    dovecot.deliver(mail_user.name, (make_message(n, tag="old") for n in range(1, 5001)))
    seen = dovecot.status(mail_user.name)  # Dovecot numbers the 5,000 (a previous run saw them)
    assert (seen.messages, seen.uidnext) == (5000, 5001)
    dovecot.deliver(mail_user.name, [make_message(n, tag="new") for n in range(1, 11)])

    with open_user(dovecot, mail_user) as client:
        started = time.perf_counter()
        batch = imap.fetch_new_messages(
            client, "INBOX", 5000, seen.uidvalidity, limit=50, max_bytes=26_214_400
        )
        elapsed = time.perf_counter() - started

    assert [m.uid for m in batch.messages] == list(range(5001, 5011))
    assert message_ids(batch) == [f"<new{n}@example.com>" for n in range(1, 11)]
    assert batch.highest_uid == 5010 and not batch.has_more
    with capsys.disabled():
        print(f"\n[measure] 5,000-message INBOX, 10 new: fetch_new_messages took {elapsed:.3f}s")


def test_a_second_dovecot_runs_side_by_side(tls_ca: TestCA) -> None:
    with DovecotServer(tls_ca) as other:
        other.add_user("solo@shop.test", "pw-solo")
        other.deliver("solo@shop.test", [make_message(1)])
        with imap.open_mailbox(
            other.host, other.imap_port, "starttls", "solo@shop.test", "pw-solo",
            timeout_seconds=TIMEOUT, ca_file=str(tls_ca.ca_file),
        ) as client:
            batch = imap.fetch_new_messages(client, "INBOX", 0, None, limit=5, max_bytes=10_000)
        assert [m.uid for m in batch.messages] == [1]
        root = other.root
    assert not root.exists()
