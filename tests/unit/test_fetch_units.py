"""worker.fetch without servers: the pure helpers, and one store's fetch over fakes."""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import pytest

from tests.unit.data import load_eml
from worker import fetch, fetch_jobs, imap, mime, parse_pool
from worker.db import Database
from worker.errors import ConfigError, DatabaseConstraintError, PermanentError, TransientError
from worker.queue.handlers import JobRun
from worker.queue.trace import JobTrace
from worker.runs import Budget

UIDVALIDITY = 777
FAR = 3600.0  # seconds: a deadline no test reaches
CONNECTED = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)  # the test store's created_at
LONG_AGO = datetime(2023, 5, 1, 9, 0, 0, tzinfo=UTC)


def message(n: int, *, body: str = "Where is my order?") -> bytes:
    return (
        f"From: Customer {n} <c{n}@example.com>\r\nTo: support@shop.test\r\n"
        f"Subject: Question {n}\r\nMessage-ID: <u{n}@example.com>\r\n\r\n{body}\r\n"
    ).encode()


class FakeMailbox:
    """The part of IMAPClient that imap.fetch_new_messages uses, over an in-memory folder.

    Each message has an INTERNALDATE (default: just after the store was connected); SEARCH
    understands `UID n:*`, `UID *` and `SINCE <date>` the way a server does.
    """

    def __init__(
        self,
        messages: dict[int, bytes],
        uidvalidity: int = UIDVALIDITY,
        *,
        dates: dict[int, datetime] | None = None,
        uidnext: int | None = None,
        announce_uidnext: bool = True,
    ) -> None:
        self.messages = messages
        self.uidvalidity = uidvalidity
        self.dates = {uid: CONNECTED + timedelta(minutes=uid) for uid in messages}
        self.dates.update(dates or {})
        self.uidnext = uidnext if uidnext is not None else max(messages, default=0) + 1
        self.announce_uidnext = announce_uidnext
        self.searches: list[list[Any]] = []
        self.fetched: list[tuple[list[int], list[str]]] = []
        self.closed = False

    def __enter__(self) -> FakeMailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def find_special_folder(self, flag: bytes) -> str | None:
        # One folder only: the Sent scan (worker/sent_scan.py) finds no Sent folder to read.
        return None

    def select_folder(self, folder: str, readonly: bool = False) -> dict[bytes, Any]:
        assert readonly, "the folder must be opened read-only"
        info: dict[bytes, Any] = {
            b"UIDVALIDITY": self.uidvalidity,
            b"EXISTS": len(self.messages),
        }
        if self.announce_uidnext:
            info[b"UIDNEXT"] = self.uidnext
        return info

    def search(self, criteria: list[Any]) -> list[int]:
        self.searches.append(list(criteria))
        assert criteria[0] == "UID"
        if criteria[1] == "*":
            return [max(self.messages)] if self.messages else []
        start = int(criteria[1].split(":")[0])
        # Like a real server, `n:*` includes the highest UID even when it is below n.
        uids = [u for u in self.messages if u >= start] or [max(self.messages)]
        if "SINCE" in criteria:
            day = criteria[criteria.index("SINCE") + 1]
            assert isinstance(day, date)
            uids = [u for u in uids if self.dates[u].date() >= day]
        return uids

    def fetch(self, uids: list[int], items: list[str]) -> dict[int, dict[bytes, Any]]:
        self.fetched.append((list(uids), list(items)))
        answer: dict[int, dict[bytes, Any]] = {}
        for uid in uids:
            if uid not in self.messages:
                continue  # expunged
            raw = self.messages[uid]
            if items == ["RFC822.SIZE"]:
                answer[uid] = {b"RFC822.SIZE": len(raw)}
            elif items == ["INTERNALDATE", "RFC822.SIZE"]:
                # imapclient's default: local time, naive.
                local = self.dates[uid].astimezone().replace(tzinfo=None)
                answer[uid] = {b"INTERNALDATE": local, b"RFC822.SIZE": len(raw)}
            elif items == ["BODY.PEEK[]"]:
                answer[uid] = {b"BODY[]": raw}
            elif items == ["BODY.PEEK[HEADER]"]:
                answer[uid] = {b"BODY[HEADER]": raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"}
            else:
                raise AssertionError(f"unexpected FETCH items {items}")
        return answer

    def bodies_read(self) -> list[int]:
        return sorted(
            uid for uids, items in self.fetched if items[0].startswith("BODY") for uid in uids
        )


class FakeDatabase:
    """Records the calls fetch makes; ingest_messages answers like the SQL function."""

    def __init__(self, *, allow: bool = True, state: dict[str, Any] | None = None) -> None:
        self.allow = allow
        self.state = state
        self.now = datetime.now(UTC)
        self.ingests: list[tuple[int, int, list[dict[str, Any]]]] = []
        self.circuit: list[tuple[str, bool]] = []
        self.events: list[dict[str, Any]] = []
        self.stores: list[dict[str, Any]] = []

    def list_active_stores(self) -> list[dict[str, Any]]:
        return self.stores

    def circuit_allow(self, service: str) -> bool:
        return self.allow

    def circuit_record(self, service: str, success: bool) -> str:
        self.circuit.append((service, success))
        return "closed"

    def circuit_wait_seconds(self, service: str) -> int:
        return 30

    def get_store_secrets(self, store_id: str) -> dict[str, Any]:
        return {"imap_password": "pw"}

    def get_mailbox_state(self, store_id: str, folder: str) -> dict[str, Any] | None:
        return self.state

    def ingest_messages(
        self, store_id: str, folder: str, uidvalidity: int, last_uid: int, rows: list[Any]
    ) -> dict[str, Any]:
        self.ingests.append((uidvalidity, last_uid, rows))
        # The mailbox_state upsert of the SQL function.
        same = self.state is not None and self.state["uidvalidity"] == uidvalidity
        position = max(int(self.state["last_uid"]), last_uid) if same and self.state else last_uid
        self.state = {"uidvalidity": uidvalidity, "last_uid": position, "updated_at": self.now}
        skipped = sum(1 for r in rows if r.get("skip_reason"))
        return {
            "stored": len(rows) - skipped,
            "duplicates": 0,
            "skipped": skipped,
            "job_ids": [f"job-{r['uid']}" for r in rows if not r.get("skip_reason")],
            "last_uid": last_uid,
        }

    def record_events(self, events: list[dict[str, Any]]) -> int:
        self.events.extend(events)
        return len(events)


STORE = {
    "id": "store-1",
    "created_at": CONNECTED,
    "imap_host": "127.0.0.1",
    "imap_port": 993,
    "imap_tls": "ssl",
    "imap_user": "u",
    "imap_folder": "INBOX",
}


def opener_for(mailbox: Any) -> fetch.MailboxOpener:
    def open_mailbox(*args: Any, **kwargs: Any) -> Any:
        if isinstance(mailbox, Exception):
            raise mailbox
        return mailbox

    return open_mailbox


def fetch_one(
    db: FakeDatabase,
    mailbox: Any,
    *,
    deadline: float | None = None,
    stop: threading.Event | None = None,
    parse: fetch.Parse | None = None,
    **options: Any,
) -> fetch.StoreOutcome:
    return fetch.fetch_store(
        cast(Database, db),
        STORE,
        opener_for(mailbox),
        fetch.FetchOptions(**options),
        time.monotonic() + FAR if deadline is None else deadline,
        stop,
        parse,
    )


# -- pure helpers ----------------------------------------------------------------------------


def test_imap_service_names_the_store() -> None:
    assert fetch.imap_service("abc") == "imap:abc"


def test_to_ingest_rows_parses_full_and_oversized_messages() -> None:
    full = load_eml("customer_pt_iso8859.eml", crlf=True)
    header = load_eml("customer_en_shopify_question.eml", crlf=True).split(b"\r\n\r\n")[0]
    batch = imap.FetchBatch(
        uidvalidity=1,
        uidvalidity_changed=False,
        messages=[
            imap.FetchedMessage(uid=7, size=len(full), data=full, oversized=False),
            imap.FetchedMessage(uid=9, size=30_000_000, data=header + b"\r\n\r\n", oversized=True),
        ],
        highest_uid=9,
    )

    parse = fetch.pool_parser(parse_pool.shared_pool())
    normal, oversized = (fetch.to_ingest_row(m, 1_000_000, parse) for m in batch.messages)

    assert normal["uid"] == 7
    assert normal["size_bytes"] == len(full)
    assert normal["message_id"] == "<5f3e2a1b.0a1b2c3d@uol.com.br>"
    assert normal["subject"] == "Onde está meu pedido #1234?"
    assert normal["body_text"]
    assert normal["skip_reason"] is None
    assert oversized["uid"] == 9
    assert oversized["size_bytes"] == 30_000_000
    assert oversized["skip_reason"] == "oversized"
    assert oversized["message_id"] == "<f4a2c1e0-7b3d-4c5e-9a8f-1d2e3f4a5b6c@app.fastmail.com>"
    assert oversized["subject"] == "Do you ship the linen dress to Canada?"
    assert oversized["body_text"] == ""
    assert "1000000-byte limit" in oversized["detail"]


def test_summarize_totals_and_lists_only_stores_with_errors() -> None:
    outcomes = [
        fetch.StoreOutcome("a", fetched=3, stored=2, duplicates=1, job_ids=["j1", "j2"]),
        fetch.StoreOutcome("b", status="failed", error="login rejected", error_type="permanent"),
        fetch.StoreOutcome("c", status="breaker_open"),
        fetch.StoreOutcome("d", status="not_started"),
        fetch.StoreOutcome("e", fetched=1, skipped=1, error="store time limit reached"),
        fetch.StoreOutcome("f", left_alone=200),
        fetch.StoreOutcome("g", status="stopped", error="run stopped", error_type="transient"),
    ]

    summary = fetch_jobs.summarize(outcomes)

    assert summary == {
        "stores": 7,
        "stores_ok": 3,
        "stores_partial": 0,
        "stores_failed": 1,
        "stores_breaker_open": 1,
        "stores_not_started": 1,
        "stores_stopped": 1,
        "fetched": 4,
        "stored": 2,
        "duplicates": 1,
        "own_copies": 0,
        "skipped": 1,
        "left_alone": 200,
        "jobs_enqueued": 2,
        "errors": [
            {"store_id": "b", "error": "login rejected", "error_type": "permanent"},
            {"store_id": "e", "error": "store time limit reached", "error_type": None},
            {"store_id": "g", "error": "run stopped", "error_type": "transient"},
        ],
    }


def test_summarize_counts_each_store_once_by_its_last_job() -> None:
    outcomes = [
        fetch.StoreOutcome("a", fetched=50, stored=50, has_more=True),
        fetch.StoreOutcome("b", status="failed", error="timed out", error_type="transient"),
        fetch.StoreOutcome("a", fetched=20, stored=20),
    ]

    summary = fetch_jobs.summarize(outcomes, stores=4)

    assert (summary["stores"], summary["stores_ok"], summary["stores_failed"]) == (4, 1, 1)
    assert summary["stores_not_started"] == 2  # the tick's other stores: not reached by this run
    assert (summary["fetched"], summary["stored"]) == (70, 70)  # every job's mail counts


def test_as_datetime_reads_both_backends_timestamps() -> None:
    aware = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    assert fetch.as_datetime(aware) == aware
    assert fetch.as_datetime("2026-03-10T12:00:00+00:00") == aware
    assert fetch.as_datetime("2026-03-10T09:00:00-03:00") == aware
    assert fetch.as_datetime("2026-03-10T12:00:00") == aware  # naive text counts as UTC
    assert fetch.as_datetime(None) is None
    assert fetch.as_datetime("not a time") is None


def test_connected_since_allows_for_clock_skew_and_defaults_to_now() -> None:
    now = datetime(2026, 4, 1, tzinfo=UTC)
    assert fetch.connected_since({"created_at": CONNECTED}, now) == CONNECTED - fetch.CLOCK_SKEW
    assert fetch.connected_since({}, now) == now - fetch.CLOCK_SKEW


def test_resync_starts_a_day_before_the_last_ingest() -> None:
    updated = datetime(2026, 4, 1, 8, 30, tzinfo=UTC)
    assert fetch.resync_since({"updated_at": updated}) == updated - timedelta(days=1)
    assert fetch.resync_since({"last_uid": 3}) is None
    assert fetch.resync_since(None) is None


# -- one store over fakes -------------------------------------------------------------------


def test_fetch_store_ingests_in_chunks_advancing_the_uid_per_chunk() -> None:
    count = fetch.INGEST_CHUNK + 5
    mailbox = FakeMailbox({n: message(n) for n in range(1, count + 1)})
    db = FakeDatabase(state={"uidvalidity": UIDVALIDITY, "last_uid": 0})

    outcome = fetch_one(db, mailbox, max_per_store=count)

    assert [(v, last, len(rows)) for v, last, rows in db.ingests] == [
        (UIDVALIDITY, fetch.INGEST_CHUNK, fetch.INGEST_CHUNK),
        (UIDVALIDITY, count, 5),
    ]
    assert (outcome.status, outcome.fetched, outcome.stored) == ("ok", count, count)
    assert len(outcome.job_ids) == count
    assert db.circuit == [("imap:store-1", True)]
    assert mailbox.closed


def test_fetch_store_starts_after_the_stored_uid() -> None:
    mailbox = FakeMailbox({n: message(n) for n in range(1, 6)})
    db = FakeDatabase(state={"uidvalidity": UIDVALIDITY, "last_uid": 3})

    outcome = fetch_one(db, mailbox)

    assert [r["uid"] for r in db.ingests[0][2]] == [4, 5]
    assert outcome.fetched == 2


def test_first_fetch_of_an_empty_mailbox_records_its_uidvalidity() -> None:
    db = FakeDatabase(state=None)

    outcome = fetch_one(db, FakeMailbox({}))

    assert db.ingests == [(UIDVALIDITY, 0, [])]
    assert outcome.status == "ok"


def test_quiet_mailbox_with_known_state_makes_no_database_write() -> None:
    db = FakeDatabase(state={"uidvalidity": UIDVALIDITY, "last_uid": 2})

    fetch_one(db, FakeMailbox({1: message(1), 2: message(2)}))

    assert db.ingests == []


def test_uidvalidity_change_refetches_from_the_start() -> None:
    mailbox = FakeMailbox({1: message(1), 2: message(2)}, uidvalidity=UIDVALIDITY + 1)
    db = FakeDatabase(state={"uidvalidity": UIDVALIDITY, "last_uid": 40})

    outcome = fetch_one(db, mailbox)

    assert outcome.uidvalidity_changed
    assert [(v, last, [r["uid"] for r in rows]) for v, last, rows in db.ingests] == [
        (UIDVALIDITY + 1, 2, [1, 2])
    ]


def test_oversized_message_is_ingested_as_skipped_with_its_header_only() -> None:
    mailbox = FakeMailbox({1: message(1), 2: message(2, body="x" * 5000), 3: message(3)})
    db = FakeDatabase()

    outcome = fetch_one(db, mailbox, max_message_bytes=1000)

    rows = db.ingests[0][2]
    assert [r["skip_reason"] for r in rows] == [None, "oversized", None]
    assert rows[1]["size_bytes"] == len(message(2, body="x" * 5000))
    assert ([2], ["BODY.PEEK[HEADER]"]) in mailbox.fetched
    assert db.ingests[0][1] == 3
    assert (outcome.stored, outcome.skipped) == (2, 1)


def test_open_breaker_skips_the_store_without_connecting() -> None:
    db = FakeDatabase(allow=False)

    outcome = fetch_one(db, AssertionError("must not connect"))

    assert outcome.status == "breaker_open"
    assert db.circuit == [] and db.ingests == [] and db.events == []


@pytest.mark.parametrize(
    "error",
    [
        PermanentError("login: login rejected", service="imap"),
        TransientError("connect: timed out", service="imap"),
    ],
)
def test_failure_is_recorded_as_event_and_breaker_failure(error: Exception) -> None:
    db = FakeDatabase()

    outcome = fetch_one(db, error)

    assert outcome.status == "failed"
    assert outcome.error == str(error)
    assert outcome.error_type == cast(Any, error).error_type
    assert db.circuit == [("imap:store-1", False)]
    assert db.events == [
        {
            "store_id": "store-1",
            "event_type": "fetch.store_failed",
            "detail": {"error": str(error), "error_type": cast(Any, error).error_type},
        }
    ]


def test_config_error_is_not_counted_against_the_store() -> None:
    db = FakeDatabase()

    with pytest.raises(ConfigError):
        fetch_one(db, ConfigError("EXTRA_CA_FILE '/x' cannot be loaded"))

    assert db.circuit == [] and db.events == []


def test_passed_deadline_stores_nothing_and_says_why() -> None:
    db = FakeDatabase()

    outcome = fetch_one(db, FakeMailbox({1: message(1)}), deadline=time.monotonic() - 1)

    assert db.ingests == []
    assert outcome.error is not None
    assert "store time limit reached after 0 of 1 messages" in outcome.error
    assert outcome.stored == 0
    # A fetch that stores nothing is a failure, recorded, not an ok with a note.
    assert outcome.status == "failed"
    assert db.circuit == [("imap:store-1", False)]
    assert [e["event_type"] for e in db.events] == ["fetch.store_failed"]


class SocketClient:
    """A client whose only I/O is one end of a socket pair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def socket(self) -> socket.socket:
        return self.sock


def test_time_limit_cuts_a_blocked_read_and_names_the_cause() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs, pytest.raises(TransientError, match="store time limit") as caught:
        with fetch._time_limit(SocketClient(ours), time.monotonic() + 0.05):
            # Blocks until the limit shuts the socket down (the peer never writes).
            assert ours.recv(10) == b""
            raise TransientError("fetch bodies INBOX: connection lost", service="imap")
    assert isinstance(caught.value.__cause__, TransientError)


def test_time_limit_leaves_errors_alone_before_the_deadline() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        with pytest.raises(PermanentError, match="NONEXISTENT"):
            with fetch._time_limit(SocketClient(ours), time.monotonic() + FAR):
                raise PermanentError("select INBOX: [NONEXISTENT]", service="imap")
        theirs.sendall(b"still open")
        assert ours.recv(10) == b"still open"


def test_time_limit_accepts_a_deadline_beyond_any_timer() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        with fetch._time_limit(SocketClient(ours), 1e12):
            theirs.sendall(b"ok")
            assert ours.recv(10) == b"ok"


# -- history is never answered -------------------------------------------------------------


def old_and_new(old: int, new: int) -> FakeMailbox:
    """A mailbox of `old` messages from long ago, then `new` arrived after the store connected."""
    messages = {n: message(n) for n in range(1, old + new + 1)}
    dates = {n: LONG_AGO + timedelta(hours=n) for n in range(1, old + 1)}
    return FakeMailbox(messages, dates=dates)


def test_first_fetch_skips_the_history_with_one_search_and_no_old_body() -> None:
    mailbox = old_and_new(1000, 2)
    # Earlier on the connection day: the day search returns it, INTERNALDATE then rules it out.
    mailbox.dates[1000] = CONNECTED - timedelta(hours=2)
    db = FakeDatabase(state=None)

    outcome = fetch_one(db, mailbox)

    assert mailbox.searches == [["UID", "1:*", "SINCE", date(2026, 3, 9)]]
    assert mailbox.bodies_read() == [1001, 1002]
    dated = [uids for uids, items in mailbox.fetched if items[0] == "INTERNALDATE"]
    assert dated == [[1000, 1001, 1002]]
    assert [(v, last, [r["uid"] for r in rows]) for v, last, rows in db.ingests] == [
        (UIDVALIDITY, 1002, [1001, 1002])
    ]
    assert (outcome.status, outcome.stored, outcome.left_alone) == ("ok", 2, 1000)
    (event,) = db.events
    assert event["event_type"] == "fetch.baseline"
    assert event["detail"]["left_alone"] == 1000
    assert event["detail"]["last_uid"] == 1002
    assert event["detail"]["since"] == (CONNECTED - fetch.CLOCK_SKEW).isoformat()


def test_first_fetch_of_only_old_mail_jumps_to_the_top_of_the_folder() -> None:
    # UIDs 1..500 old; 501..510 were expunged, so UIDNEXT is 511.
    mailbox = old_and_new(500, 0)
    mailbox.uidnext = 511
    db = FakeDatabase(state=None)

    outcome = fetch_one(db, mailbox)

    assert db.ingests == [(UIDVALIDITY, 510, [])]
    assert mailbox.bodies_read() == [] and mailbox.fetched == []
    assert (outcome.fetched, outcome.left_alone) == (0, 500)
    assert [e["event_type"] for e in db.events] == ["fetch.baseline"]
    # The baseline cost one run: the next one has nothing to look at.
    mailbox.searches.clear()
    again = fetch_one(db, mailbox)
    assert (again.fetched, len(db.ingests), mailbox.searches) == (0, 1, [])


def test_first_fetch_without_uidnext_asks_for_the_highest_uid() -> None:
    mailbox = old_and_new(30, 0)
    mailbox.announce_uidnext = False
    db = FakeDatabase(state=None)

    fetch_one(db, mailbox)

    assert mailbox.searches[-1] == ["UID", "*"]
    assert db.ingests == [(UIDVALIDITY, 30, [])]


def test_first_fetch_beyond_the_limit_leaves_no_old_mail_for_the_next_run() -> None:
    # 20 old, then 8 new, then 5 old again (copied in with their dates), then 4 new.
    messages = {n: message(n) for n in range(1, 38)}
    old = [*range(1, 21), *range(29, 34)]
    mailbox = FakeMailbox(messages, dates={n: LONG_AGO for n in old})
    db = FakeDatabase(state=None)

    first = fetch_one(db, mailbox, max_per_store=8)
    second = fetch_one(db, mailbox, max_per_store=8)

    # The first run stops before the next new message (UID 34): 29..33 are covered.
    assert [(last, [r["uid"] for r in rows]) for _, last, rows in db.ingests] == [
        (33, list(range(21, 29))),
        (37, [34, 35, 36, 37]),
    ]
    assert (first.stored, second.stored) == (8, 4)


def test_window_chunks_cover_old_mail_between_them() -> None:
    count = fetch.INGEST_CHUNK + 30
    messages = {n: message(n) for n in range(1, count + 1)}
    # The old stretch sits between the first chunk of new mail and the rest.
    old = range(fetch.INGEST_CHUNK + 1, fetch.INGEST_CHUNK + 21)
    mailbox = FakeMailbox(messages, dates={n: LONG_AGO for n in old})
    db = FakeDatabase(state=None)

    fetch_one(db, mailbox, max_per_store=100)

    assert [(last, len(rows)) for _, last, rows in db.ingests] == [
        (fetch.INGEST_CHUNK + 20, fetch.INGEST_CHUNK),
        (count, 10),
    ]


def test_uidvalidity_change_resyncs_only_the_last_days_mail() -> None:
    last_ingest = datetime(2026, 6, 1, 15, 0, tzinfo=UTC)
    count = 2000
    messages = {n: message(n) for n in range(1, count + 2)}
    dates = {n: LONG_AGO + timedelta(minutes=n) for n in range(1, count - 2)}
    dates |= {n: last_ingest - timedelta(hours=3) for n in range(count - 2, count + 1)}
    dates[count + 1] = last_ingest + timedelta(days=2)  # the new one
    mailbox = FakeMailbox(messages, uidvalidity=UIDVALIDITY + 1, dates=dates)
    db = FakeDatabase(
        state={"uidvalidity": UIDVALIDITY, "last_uid": 5000, "updated_at": last_ingest}
    )

    outcome = fetch_one(db, mailbox)

    assert outcome.uidvalidity_changed
    assert mailbox.searches == [["UID", "1:*", "SINCE", date(2026, 5, 30)]]
    # The three stored in the day before the last ingest come again (dedupe absorbs them).
    assert mailbox.bodies_read() == [count - 2, count - 1, count, count + 1]
    assert [(v, last) for v, last, _ in db.ingests] == [(UIDVALIDITY + 1, count + 1)]
    assert outcome.left_alone == count - 3
    (event,) = db.events
    assert event["event_type"] == "fetch.uidvalidity_changed"
    assert event["detail"]["previous_uidvalidity"] == UIDVALIDITY
    assert event["detail"]["uidvalidity"] == UIDVALIDITY + 1
    assert event["detail"]["since"] == (last_ingest - fetch.RESYNC_OVERLAP).isoformat()


def test_known_mailbox_still_takes_old_dated_mail_that_arrives_later() -> None:
    # After the baseline, UIDs alone decide: mail copied in later with an old date is new mail.
    mailbox = FakeMailbox({1: message(1), 2: message(2)}, dates={2: LONG_AGO})
    db = FakeDatabase(state={"uidvalidity": UIDVALIDITY, "last_uid": 1})

    outcome = fetch_one(db, mailbox)

    assert outcome.stored == 1 and mailbox.searches == [["UID", "2:*"]]
    assert db.events == []


# -- shutdown --------------------------------------------------------------------------------


class StoppingMailbox(FakeMailbox):
    """Shutdown is requested while the mailbox is being read."""

    def __init__(self, messages: dict[int, bytes], stop: threading.Event) -> None:
        super().__init__(messages)
        self.stop = stop

    def search(self, criteria: list[Any]) -> list[int]:
        self.stop.set()
        return super().search(criteria)


def test_stop_during_a_store_stores_nothing_and_blames_no_one() -> None:
    stop = threading.Event()
    db = FakeDatabase(state={"uidvalidity": UIDVALIDITY, "last_uid": 0})

    outcome = fetch_one(db, StoppingMailbox({1: message(1), 2: message(2)}, stop), stop=stop)

    assert outcome.status == "stopped"
    assert db.ingests == []
    assert db.events == []
    assert ("imap:store-1", False) not in db.circuit


def test_time_limit_cuts_a_blocked_read_when_the_run_is_stopped() -> None:
    ours, theirs = socket.socketpair()
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    with ours, theirs, pytest.raises(fetch.FetchStopped, match="stopped") as caught:
        with fetch._time_limit(SocketClient(ours), time.monotonic() + FAR, stop):
            # Blocks until the stop shuts the socket down (the peer never writes).
            assert ours.recv(10) == b""
            raise TransientError("fetch bodies INBOX: connection lost", service="imap")
    assert isinstance(caught.value.__cause__, TransientError)


def test_time_limit_with_a_stop_event_leaves_a_finished_fetch_alone() -> None:
    ours, theirs = socket.socketpair()
    stop = threading.Event()
    with ours, theirs:
        with fetch._time_limit(SocketClient(ours), time.monotonic() + FAR, stop):
            theirs.sendall(b"ok")
            assert ours.recv(10) == b"ok"
        # The watcher ends with the fetch, so a later stop has nothing left to cut.
        for thread in threading.enumerate():
            if thread.name == "fetch-time-limit":
                thread.join(FAR)
        assert not any(t.name == "fetch-time-limit" for t in threading.enumerate())
        stop.set()
        theirs.sendall(b"still open")
        assert ours.recv(10) == b"still open"


# -- the run: fetch jobs over a fake queue (the SQL queue is tested in test_fetch_jobs.py) ----


class QueueDatabase(FakeDatabase):
    """FakeDatabase plus an in-memory fetch queue with the SQL functions' rules: one live job
    per active store, a claim takes due pending jobs, a held job is finished or failed once."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.jobs: list[dict[str, Any]] = []
        self.settled: list[tuple[str, str, Any]] = []  # (store, how, detail)

    def get_store(self, store_id: str) -> dict[str, Any] | None:
        return next((dict(s, active=True) for s in self.stores if s["id"] == store_id), None)

    def _live(self, store_id: str) -> bool:
        return any(
            j["store_id"] == store_id and j["status"] in ("pending", "processing")
            for j in self.jobs
        )

    def _add(self, store_id: str) -> None:
        job_id = f"fetch-{len(self.jobs) + 1}"
        self.jobs.append({"id": job_id, "job_type": "fetch_mailbox", "store_id": store_id,
                          "status": "pending", "due": True})

    def enqueue_fetch_jobs(self, store_ids: list[str] | None = None) -> dict[str, Any]:
        new = [s["id"] for s in self.stores if not self._live(s["id"])]
        for store_id in new:
            self._add(store_id)
        return {"stores": len(self.stores), "enqueued": len(new), "rerun": 0, "job_ids": []}

    def dequeue_jobs(
        self, worker_id: str, batch: int, lease: int, job_types: list[str] | None = None
    ) -> list[dict[str, Any]]:
        due = [j for j in self.jobs if j["status"] == "pending" and j["due"]][:batch]
        for job in due:
            job["status"] = "processing"
        return [dict(j) for j in due]

    def extend_lease(self, worker_id: str, job_ids: list[str], lease: int) -> int:
        return len(job_ids)

    def _job(self, job_id: str) -> dict[str, Any]:
        job = next(j for j in self.jobs if j["id"] == job_id)
        assert job["status"] == "processing", "settled twice"
        return job

    def finish_fetch_job(
        self, job_id: str, worker_id: str, result: dict[str, Any], more: bool, idle: bool
    ) -> dict[str, Any]:
        job = self._job(job_id)
        job["status"] = "completed"
        self.settled.append((job["store_id"], "idle" if idle else "finished", result))
        if more:
            self._add(job["store_id"])
        return {"completed": True, "follow_up": None, "reason": "backlog" if more else None}

    def complete_job(self, job_id: str, worker_id: str, result: Any = None) -> bool:
        job = self._job(job_id)
        job["status"] = "completed"
        self.settled.append((job["store_id"], "completed", result))
        return True

    def fail_job(
        self, job_id: str, worker_id: str, error: str, error_type: str, retry_after: Any = None
    ) -> str:
        job = self._job(job_id)
        job["status"], job["due"] = "pending", False  # retried later, not in this run
        self.settled.append((job["store_id"], f"failed_{error_type}", error))
        return "pending"

    def defer_job(self, job_id: str, worker_id: str, seconds: int, reason: str) -> bool:
        job = self._job(job_id)
        job["status"], job["due"] = "pending", False
        self.settled.append((job["store_id"], "deferred", seconds))
        return True


def run_fetch(db: QueueDatabase, budget: Budget, **kwargs: Any) -> dict[str, Any]:
    return fetch_jobs.run_fetch(cast(Database, db), budget, **kwargs)


def test_spent_budget_starts_no_store() -> None:
    db = QueueDatabase()
    db.stores = [dict(STORE, id="a"), dict(STORE, id="b")]

    summary = run_fetch(db, Budget(0), open_mailbox=opener_for(AssertionError("no connect")))

    assert summary["stores_not_started"] == 2
    assert db.circuit == [] and db.ingests == []
    # The jobs wait for the next run (or another machine), due now.
    assert [(j["status"], j["due"]) for j in db.jobs] == [("pending", True)] * 2


def test_unexpected_error_in_one_store_does_not_sink_the_others() -> None:
    db = QueueDatabase()
    mailboxes = {"a": RuntimeError("bug"), "b": FakeMailbox({1: message(1)})}

    def open_mailbox(host: str, port: int, tls: str, user: str, *a: Any, **kw: Any) -> Any:
        # The fakes tell the stores apart by the user name the opener receives.
        mailbox = mailboxes[user]
        if isinstance(mailbox, Exception):
            raise mailbox
        return mailbox

    db.stores = [dict(STORE, id="a", imap_user="a"), dict(STORE, id="b", imap_user="b")]
    summary = run_fetch(db, Budget(FAR), open_mailbox=open_mailbox)

    assert (summary["stores_ok"], summary["stores_failed"], summary["stored"]) == (1, 1, 1)
    assert summary["errors"] == [
        {"store_id": "a", "error": "RuntimeError('bug')", "error_type": "transient"}
    ]
    # The buggy store's job is retried on its policy; the other one's is finished.
    assert sorted((store, how) for store, how, _ in db.settled) == [
        ("a", "failed_transient"),
        ("b", "finished"),
    ]


def test_run_stop_reaches_a_store_already_being_fetched() -> None:
    budget = Budget(FAR)
    db = QueueDatabase(state={"uidvalidity": UIDVALIDITY, "last_uid": 0})
    db.stores = [dict(STORE)]
    mailbox = StoppingMailbox({1: message(1)}, budget.stop_event)

    summary = run_fetch(db, budget, open_mailbox=opener_for(mailbox))

    assert (summary["stores_stopped"], summary["stored"]) == (1, 0)
    assert db.ingests == []
    # Retried: the next run (or another machine) reads from the stored UID.
    assert [(store, how) for store, how, _ in db.settled] == [("store-1", "failed_transient")]


def test_unusable_ca_file_fails_the_run_before_any_store(tmp_path: Any) -> None:
    db = QueueDatabase()
    db.stores = [dict(STORE)]
    broken = tmp_path / "ca.pem"
    broken.write_text("not a certificate\n")

    with pytest.raises(ConfigError, match="EXTRA_CA_FILE"):
        run_fetch(
            db,
            Budget(FAR),
            open_mailbox=opener_for(AssertionError("no connect")),
            options=fetch.FetchOptions(ca_file=str(broken)),
        )

    assert db.circuit == [] and db.events == [] and db.jobs == []


def test_a_store_with_more_mail_than_a_job_takes_is_drained_by_follow_ups() -> None:
    db = QueueDatabase(state={"uidvalidity": UIDVALIDITY, "last_uid": 0})
    db.stores = [dict(STORE)]
    mailbox = FakeMailbox({uid: message(uid) for uid in range(1, 8)})

    summary = run_fetch(
        db, Budget(FAR), open_mailbox=opener_for(mailbox),
        options=fetch.FetchOptions(max_per_store=3),
    )

    assert summary["stored"] == 7 and summary["fetch_jobs"] == 3
    assert [(r["stored"], r["more"]) for _, how, r in db.settled if how == "finished"] == [
        (3, True),
        (3, True),
        (1, False),
    ]
    assert db.state is not None and db.state["last_uid"] == 7


def test_an_open_breaker_defers_the_job_without_an_attempt() -> None:
    db = QueueDatabase(allow=False)
    db.stores = [dict(STORE)]

    summary = run_fetch(db, Budget(FAR), open_mailbox=opener_for(AssertionError("no connect")))

    assert summary["stores_breaker_open"] == 1
    assert db.settled == [("store-1", "deferred", 30)]  # the breaker's own wait


def test_a_fetch_that_found_nothing_is_not_kept() -> None:
    db = QueueDatabase(state={"uidvalidity": UIDVALIDITY, "last_uid": 1})
    db.stores = [dict(STORE)]

    run_fetch(db, Budget(FAR), open_mailbox=opener_for(FakeMailbox({1: message(1)})))

    assert [(store, how) for store, how, _ in db.settled] == [("store-1", "idle")]
    assert fetch_jobs.is_idle(fetch.StoreOutcome("s"))
    assert not fetch_jobs.is_idle(fetch.StoreOutcome("s", fetched=1, stored=1))
    assert not fetch_jobs.is_idle(fetch.StoreOutcome("s", left_alone=3))  # a baseline
    assert not fetch_jobs.is_idle(fetch.StoreOutcome("s", uidvalidity_changed=True))


def test_a_refused_login_is_permanent_and_a_lost_connection_transient() -> None:
    refused = fetch_jobs.failure(
        fetch.StoreOutcome("s", status="failed", error="login failed", error_type="permanent")
    )
    lost = fetch_jobs.failure(
        fetch.StoreOutcome("s", status="failed", error="timed out", error_type="transient")
    )
    assert isinstance(refused, PermanentError) and "login failed" in str(refused)
    assert isinstance(lost, TransientError) and not isinstance(lost, PermanentError)


def inline_parse(raw: bytes, uid: int, size: int) -> dict[str, Any]:
    return mime.parse_message(raw, uid=uid).to_ingest_json()


def test_messages_are_stored_before_a_large_message_is_parsed() -> None:
    db = FakeDatabase()
    stored_when_parsing: dict[int, list[int]] = {}

    def parse(raw: bytes, uid: int, size: int) -> dict[str, Any]:
        stored_when_parsing[uid] = [int(r["uid"]) for _, _, rows in db.ingests for r in rows]
        return inline_parse(raw, uid, size)

    large = message(3, body="x" * (fetch.SLOW_PARSE_BYTES + 1))
    mailbox = FakeMailbox({1: message(1), 2: message(2), 3: large, 4: message(4)})

    outcome = fetch_one(db, mailbox, parse=parse)

    assert stored_when_parsing[3] == [1, 2]  # one slow message never holds back earlier ones
    assert [(position, [r["uid"] for r in rows]) for _, position, rows in db.ingests] == [
        (2, [1, 2]),
        (4, [3, 4]),
    ]
    assert (outcome.status, outcome.stored) == ("ok", 4)


def test_time_limit_stores_what_was_parsed_and_is_recorded_as_partial() -> None:
    db = FakeDatabase()
    deadline = time.monotonic() + 0.3

    def parse(raw: bytes, uid: int, size: int) -> dict[str, Any]:
        if uid == 2:
            time.sleep(0.4)  # runs past the store's deadline
        return inline_parse(raw, uid, size)

    mailbox = FakeMailbox({1: message(1), 2: message(2), 3: message(3)})
    outcome = fetch_one(db, mailbox, deadline=deadline, parse=parse)

    assert [(position, [r["uid"] for r in rows]) for _, position, rows in db.ingests] == [
        (2, [1, 2])
    ]
    assert db.state is not None and db.state["last_uid"] == 2  # the next run starts at 3
    assert outcome.status == "partial"
    assert outcome.error is not None and "after 2 of 3 messages" in outcome.error
    assert [e["event_type"] for e in db.events] == ["fetch.baseline", "fetch.store_failed"]
    assert db.circuit == []  # progress: the mailbox works, its breaker is not charged


class RefusingDatabase(FakeDatabase):
    """Refuses for good any batch holding a message whose subject contains 'poison'."""

    def ingest_messages(
        self, store_id: str, folder: str, uidvalidity: int, last_uid: int, rows: list[Any]
    ) -> dict[str, Any]:
        if any("poison" in (r.get("subject") or "") for r in rows):
            self.ingests.append((uidvalidity, -1, rows))
            raise DatabaseConstraintError("ingest_messages: invalid input", code="22P05")
        return super().ingest_messages(store_id, folder, uidvalidity, last_uid, rows)


def test_a_refused_batch_is_stored_message_by_message_and_the_bad_one_as_a_stub() -> None:
    db = RefusingDatabase()
    poison = message(2).replace(b"Subject: Question 2", b"Subject: poison")
    mailbox = FakeMailbox({1: message(1), 2: poison, 3: message(3)})

    outcome = fetch_one(db, mailbox, parse=inline_parse)

    accepted = [(pos, rows) for _, pos, rows in db.ingests if pos >= 0]
    assert [(pos, [r["uid"] for r in rows]) for pos, rows in accepted] == [
        (1, [1]),
        (2, [2]),
        (3, [3]),
    ]
    stub = accepted[1][1][0]
    assert stub["skip_reason"] == "unstorable"
    assert stub["message_id"] == "<u2@example.com>"  # the dedupe still knows it
    assert stub["subject"] == "" and stub["body_text"] == ""
    assert (outcome.status, outcome.stored, outcome.skipped) == ("ok", 2, 1)
    assert db.state is not None and db.state["last_uid"] == 3


def test_unstorable_stub_keeps_only_a_printable_message_id() -> None:
    error = DatabaseConstraintError("bad", code="22P05")
    row = {"message_id": "<a\x00b@x>", "uid": 5, "size_bytes": 10, "subject": "x\x00"}
    assert fetch.unstorable_stub(row, error)["message_id"] == "<ab@x>"
    broken = fetch.unstorable_stub({"message_id": "\x00", "uid": 5}, error)
    assert broken["message_id"] == "<unstorable-5@synthetic.invalid>"


def test_a_job_claimed_at_the_end_of_the_budget_gets_the_stores_whole_time() -> None:
    # A fetch cut by the run's deadline would count against the store (an attempt, its
    # breaker); the run's budget only stops claiming, the store's own time limit stays.
    db = QueueDatabase(state={"uidvalidity": UIDVALIDITY, "last_uid": 0})
    db.stores = [dict(STORE)]
    db.enqueue_fetch_jobs()
    (job,) = db.dequeue_jobs("w", 1, 30)
    budget = Budget(0.05)

    def slow_parse(raw: bytes, uid: int, size: int) -> dict[str, Any]:
        time.sleep(0.2)  # past the run's budget
        return inline_parse(raw, uid, size)

    handler = fetch_jobs.FetchHandler(
        cast(Database, db),
        fetch.FetchOptions(store_timeout_seconds=FAR),
        open_mailbox=opener_for(FakeMailbox({1: message(1), 2: message(2)})),
        budget=budget,
        parse=slow_parse,
    )
    result = handler.handle(JobRun(job=job, worker_id="w", trace=JobTrace(job)))

    assert budget.expired()
    assert (result.summary["outcome"], result.summary["stored"]) == ("ok", 2)
    assert db.circuit == [("imap:store-1", True)]
