"""fetch-emails end to end: real Dovecot mailboxes, the real database, worker.fetch_jobs.run_fetch
(a fetch job per store, claimed and run through the job runner).

The database is shared with the rest of the suite, so each test enqueues fetch jobs for only the
stores it created (ScopedDatabase) and, on teardown, deactivates them and drops their pending
jobs, so no other test's fetch or process run ever touches them.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import DictRow

from tests.support.mail_servers import MailUser
from tests.unit.data import load_eml, sample_names
from worker import db as dbmod
from worker import fetch, fetch_jobs, imap, runs
from worker.app import create_app, get_state
from worker.config import Settings, load_settings
from worker.db import Database, Row
from worker.devstack.dovecot import DovecotServer
from worker.errors import ConfigError
from worker.runs import Budget
from worker.services import build_services

pytestmark = pytest.mark.integration

IMAP_TIMEOUT = 20.0  # seconds; generous for a loaded 2-core box, never reached on success
RUN_BUDGET = 300.0  # seconds; only the budget tests want it spent
RUN_WAIT = 120.0  # seconds the HTTP test waits for its background run before failing
WORKER_SECRET = "fetch-test-worker-secret-0123456789"  # throwaway, test only
FAILURE_THRESHOLD = 5  # circuit_breakers.failure_threshold's default

_store_numbers = itertools.count(1)


class ScopedDatabase(Database):
    """The real Database, except that only the given stores count as active."""

    def __init__(self, transport: dbmod.Transport, store_ids: Sequence[str]) -> None:
        super().__init__(transport)
        self.store_ids = list(store_ids)

    def list_active_stores(self) -> list[Row]:
        wanted = set(self.store_ids)
        return [s for s in super().list_active_stores() if str(s["id"]) in wanted]

    def enqueue_fetch_jobs(self, store_ids: Sequence[str] | None = None) -> dict[str, Any]:
        return super().enqueue_fetch_jobs(self.store_ids if store_ids is None else store_ids)


def make_message(
    n: int,
    *,
    tag: str,
    sender: str | None = None,
    in_reply_to: str | None = None,
    body: str = "Hello, where is my order?",
) -> bytes:
    headers = [
        f"From: Customer {n} <{sender or f'customer{n}@example.com'}>",
        "To: support@shop.test",
        f"Subject: Question {n}",
        f"Message-ID: <{tag}.{n}@example.com>",
        "Date: Tue, 04 Mar 2025 12:00:00 +0000",
    ]
    if in_reply_to:
        headers += [f"In-Reply-To: {in_reply_to}", f"References: {in_reply_to}"]
    return ("\r\n".join(headers) + f"\r\n\r\n{body} ({n})\r\n").encode()


def settings_for(database_url: str, ca_file: str, **extra: str) -> Settings:
    env = {
        "DATABASE_URL": database_url,
        "WORKER_SECRET": WORKER_SECRET,
        "EXTRA_CA_FILE": ca_file,
        "IMAP_TIMEOUT_SECONDS": str(IMAP_TIMEOUT),
        **extra,
    }
    return load_settings(env)


@dataclass
class FetchWorld:
    """What a test needs: the stores it made, a scoped database and SQL access for checks."""

    dovecot: DovecotServer
    base: Database
    sql: psycopg.Connection[DictRow]
    ca_file: str
    store_ids: list[str]

    def add_store(
        self,
        user: MailUser,
        *,
        password: str | None = None,
        tls: str = "ssl",
        port: int | None = None,
        folder: str = "INBOX",
    ) -> str:
        n = next(_store_numbers)
        if port is None:
            port = self.dovecot.imaps_port if tls == "ssl" else self.dovecot.imap_port
        store_id = self.base.admin_create_store(
            {
                "name": f"Fetch test store {n}",
                "support_email": f"support{n}@shop.test",
                "imap_host": self.dovecot.host,
                "imap_port": port,
                "imap_user": user.name,
                "imap_tls": tls,
                "imap_folder": folder,
                "smtp_host": "127.0.0.1",
                "smtp_port": 9,
                "smtp_user": user.name,
                "smtp_tls": "plain",
            },
            {"imap_password": password or user.password, "smtp_password": "unused-smtp-pw"},
        )
        self.store_ids.append(store_id)
        return store_id

    def scoped(self, *store_ids: str) -> ScopedDatabase:
        return ScopedDatabase(self.base.transport, store_ids or self.store_ids)

    def options(self, **changes: Any) -> fetch.FetchOptions:
        defaults: dict[str, Any] = {
            "concurrency": 3,
            "imap_timeout_seconds": IMAP_TIMEOUT,
            "store_timeout_seconds": RUN_BUDGET,
            "ca_file": self.ca_file,
        }
        return fetch.FetchOptions(**{**defaults, **changes})

    def run(
        self,
        *store_ids: str,
        budget: float = RUN_BUDGET,
        opener: fetch.MailboxOpener = imap.open_mailbox,
        **options: Any,
    ) -> dict[str, Any]:
        return fetch_jobs.run_fetch(
            self.scoped(*store_ids),
            Budget(budget),
            open_mailbox=opener,
            options=self.options(**options),
        )

    # -- checks, straight from the tables --------------------------------------------------

    def messages(self, store_id: str) -> list[dict[str, Any]]:
        return self.sql.execute(
            "select * from public.messages where store_id = %s order by imap_uid, received_at",
            (store_id,),
        ).fetchall()

    def jobs(self, store_id: str) -> list[dict[str, Any]]:
        """The jobs the store's mail created (its own fetch jobs are in fetch_jobs)."""
        return self.sql.execute(
            "select * from public.job_queue where store_id = %s and job_type <> 'fetch_mailbox'"
            " order by created_at, id",
            (store_id,),
        ).fetchall()

    def fetch_jobs(self, store_id: str) -> list[dict[str, Any]]:
        return self.sql.execute(
            "select * from public.job_queue where store_id = %s and job_type = 'fetch_mailbox'"
            " order by created_at, id",
            (store_id,),
        ).fetchall()

    def events(self, store_id: str, event_type: str) -> list[dict[str, Any]]:
        return self.sql.execute(
            "select * from public.events where store_id = %s and event_type = %s order by id",
            (store_id, event_type),
        ).fetchall()

    def mailbox_state(self, store_id: str, folder: str = "INBOX") -> dict[str, Any] | None:
        return self.sql.execute(
            "select * from public.mailbox_state where store_id = %s and folder = %s",
            (store_id, folder),
        ).fetchone()

    def breaker(self, store_id: str) -> dict[str, Any] | None:
        return self.sql.execute(
            "select * from public.circuit_breakers where service = %s",
            (fetch.imap_service(store_id),),
        ).fetchone()

    def stored_ids(self, store_id: str) -> list[str]:
        return [m["message_id"] for m in self.messages(store_id)]

    def assert_one_job_per_message(self, store_id: str) -> None:
        """Every processable message has exactly one process_email job pointing at it."""
        messages = [m for m in self.messages(store_id) if m["skip_reason"] is None]
        jobs = self.jobs(store_id)
        assert sorted(str(j["payload"]["message_id"]) for j in jobs) == sorted(
            str(m["id"]) for m in messages
        )
        assert {j["job_type"] for j in jobs} <= {"process_email"}
        by_id = {str(m["id"]): m for m in messages}
        for job in jobs:
            message = by_id[str(job["payload"]["message_id"])]
            assert job["idempotency_key"] == f"email:{store_id}:{message['message_id']}"
            assert str(job["conversation_id"]) == str(message["conversation_id"])


@pytest.fixture(scope="session")
def base_database(database_url: str) -> Iterator[Database]:
    """One pooled Database for the module's tests (each test scopes its own view of it)."""
    settings = load_settings({"DATABASE_URL": database_url, "WORKER_SECRET": WORKER_SECRET})
    database = dbmod.connect(settings)
    yield database
    database.close()


@pytest.fixture
def world(
    dovecot: DovecotServer,
    base_database: Database,
    db: psycopg.Connection[DictRow],
) -> Iterator[FetchWorld]:
    created = FetchWorld(dovecot, base_database, db, str(dovecot.ca.ca_file), [])
    yield created
    # Other tests' process runs share this database: leave nothing of ours for them to claim.
    for store_id in created.store_ids:
        base_database.admin_update_store(store_id, {"active": False})
    db.execute(
        "delete from public.job_queue where store_id = any(%s::uuid[]) and status = 'pending'",
        (created.store_ids,),
    )


@dataclass
class ImapLog:
    """The SEARCH and FETCH commands a fetch sent, to show what it read."""

    searches: list[list[Any]] = field(default_factory=list)
    fetches: list[tuple[list[int], list[str]]] = field(default_factory=list)

    def opener(self) -> fetch.MailboxOpener:
        def open_mailbox(*args: Any, **kwargs: Any) -> Any:
            client = imap.open_mailbox(*args, **kwargs)
            search, fetch_items = client.search, client.fetch

            def logged_search(criteria: Any, *more: Any, **kw: Any) -> Any:
                self.searches.append(list(criteria))
                return search(criteria, *more, **kw)

            def logged_fetch(uids: Any, items: Any, *more: Any, **kw: Any) -> Any:
                self.fetches.append((sorted(int(u) for u in uids), list(items)))
                return fetch_items(uids, items, *more, **kw)

            # Instance attributes shadow the methods for this one connection.
            setattr(client, "search", logged_search)  # noqa: B010
            setattr(client, "fetch", logged_fetch)  # noqa: B010
            return client

        return open_mailbox

    def uids_read(self, first_item: str) -> list[int]:
        return sorted(u for uids, items in self.fetches if items[0] == first_item for u in uids)


def append_dated(
    dovecot: DovecotServer, user: str, mail: Sequence[tuple[bytes, datetime]], folder: str = "INBOX"
) -> None:
    """Put mail into a folder through IMAP (MULTI)APPEND with each message's INTERNALDATE, as a
    mailbox with a history (or a migration that keeps dates) has it."""
    with dovecot.client(user) as client:
        if not client.folder_exists(folder):
            client.create_folder(folder)
        client.multiappend(folder, [{"msg": raw, "date": when} for raw, when in mail])


def new_user(dovecot: DovecotServer) -> MailUser:
    user = MailUser(name=f"fetch-{uuid.uuid4().hex[:12]}@shop.test", password="imap-test-pw")
    dovecot.add_user(user.name, user.password)
    return user


# -- the runs --------------------------------------------------------------------------------


def test_stores_in_parallel_each_get_exactly_their_messages(
    world: FetchWorld, dovecot: DovecotServer
) -> None:
    expected: dict[str, list[str]] = {}
    for s in range(6):
        user = new_user(dovecot)
        store_id = world.add_store(user, tls="ssl" if s % 2 == 0 else "starttls")
        count = 5 + s
        tag = f"par{s}-{uuid.uuid4().hex[:8]}"
        dovecot.deliver(user.name, [make_message(n, tag=tag) for n in range(1, count + 1)])
        expected[store_id] = [f"<{tag}.{n}@example.com>" for n in range(1, count + 1)]

    started = time.monotonic()
    summary = world.run(concurrency=3)
    elapsed = time.monotonic() - started
    print(f"\nMEASURED parallel fetch: 6 stores, concurrency 3, 45 messages: {elapsed:.2f} s")

    total = sum(len(ids) for ids in expected.values())
    assert summary["stores"] == 6
    assert summary["stores_ok"] == 6
    assert summary["fetched"] == summary["stored"] == summary["jobs_enqueued"] == total
    assert summary["errors"] == []
    for store_id, ids in expected.items():
        assert world.stored_ids(store_id) == ids
        assert [m["imap_uid"] for m in world.messages(store_id)] == list(range(1, len(ids) + 1))
        world.assert_one_job_per_message(store_id)
        state = world.mailbox_state(store_id)
        assert state is not None and state["last_uid"] == len(ids)
        assert len(world.events(store_id, "message.received")) == len(ids)


def test_rerun_fetches_nothing_new(world: FetchWorld, dovecot: DovecotServer) -> None:
    user = new_user(dovecot)
    store_id = world.add_store(user)
    dovecot.deliver(user.name, [make_message(n, tag="rerun") for n in (1, 2, 3)])
    assert world.run()["stored"] == 3

    again = world.run()

    assert again["stores_ok"] == 1
    assert again["fetched"] == again["stored"] == again["duplicates"] == 0
    assert len(world.messages(store_id)) == 3
    assert len(world.jobs(store_id)) == 3
    assert world.events(store_id, "message.duplicate") == []

    dovecot.deliver(user.name, [make_message(4, tag="rerun")])
    third = world.run()
    assert third["fetched"] == third["stored"] == 1
    assert world.stored_ids(store_id)[-1] == "<rerun.4@example.com>"
    world.assert_one_job_per_message(store_id)


def test_same_message_delivered_twice_is_stored_once(
    world: FetchWorld, dovecot: DovecotServer
) -> None:
    user = new_user(dovecot)
    store_id = world.add_store(user)
    twice = make_message(1, tag="twice")
    dovecot.deliver(user.name, [twice, make_message(2, tag="twice"), twice])

    summary = world.run()

    assert summary["fetched"] == 3
    assert summary["stored"] == 2
    assert summary["duplicates"] == 1
    assert world.stored_ids(store_id) == ["<twice.1@example.com>", "<twice.2@example.com>"]
    assert [m["imap_uid"] for m in world.messages(store_id)] == [1, 2]  # the first copy wins
    world.assert_one_job_per_message(store_id)
    (duplicate,) = world.events(store_id, "message.duplicate")
    assert duplicate["detail"]["uid"] == 3
    assert world.mailbox_state(store_id)["last_uid"] == 3  # type: ignore[index]


def test_uidvalidity_change_stores_only_the_new_message(
    world: FetchWorld, dovecot: DovecotServer
) -> None:
    user = new_user(dovecot)
    store_id = world.add_store(user)
    dovecot.deliver(user.name, [make_message(n, tag="uidv") for n in (1, 2, 3)])
    assert world.run()["stored"] == 3
    old_state = world.mailbox_state(store_id)
    assert old_state is not None

    new_validity = dovecot.recreate_folder(user.name)
    dovecot.deliver(user.name, [make_message(4, tag="uidv")])
    summary = world.run()

    assert new_validity != old_state["uidvalidity"]
    assert summary["fetched"] == 4
    assert summary["stored"] == 1
    assert summary["duplicates"] == 3
    assert world.stored_ids(store_id) == [f"<uidv.{n}@example.com>" for n in (1, 2, 3, 4)]
    assert len(world.jobs(store_id)) == 4
    world.assert_one_job_per_message(store_id)
    state = world.mailbox_state(store_id)
    assert state is not None
    assert (state["uidvalidity"], state["last_uid"]) == (new_validity, 4)
    # And the new numbering is now the baseline: nothing more on the next run.
    assert world.run()["fetched"] == 0


def test_wrong_password_is_isolated_and_recorded(world: FetchWorld, dovecot: DovecotServer) -> None:
    good_users = [new_user(dovecot) for _ in range(2)]
    good = [world.add_store(u) for u in good_users]
    bad_user = new_user(dovecot)
    bad = world.add_store(bad_user, password="not-the-password")
    for i, user in enumerate(good_users):
        dovecot.deliver(user.name, [make_message(n, tag=f"iso{i}") for n in (1, 2)])

    summary = world.run()

    assert summary["stores_ok"] == 2
    assert summary["stores_failed"] == 1
    assert summary["stored"] == 4
    (error,) = summary["errors"]
    assert error["store_id"] == bad
    assert error["error_type"] == "permanent"
    assert "login" in error["error"]
    for store_id in good:
        assert len(world.messages(store_id)) == 2
        world.assert_one_job_per_message(store_id)
    (event,) = world.events(bad, "fetch.store_failed")
    assert event["detail"]["error_type"] == "permanent"
    assert "login" in event["detail"]["error"]
    breaker = world.breaker(bad)
    assert breaker is not None
    assert (breaker["state"], breaker["consecutive_failures"]) == ("closed", 1)
    for store_id in good:
        good_breaker = world.breaker(store_id)
        assert good_breaker is None or good_breaker["consecutive_failures"] == 0
    # A refused login is the store's to fix: its job is dead-lettered with the reason (the next
    # interval enqueues a fresh one); the others' jobs completed.
    (bad_job,) = world.fetch_jobs(bad)
    assert (bad_job["status"], bad_job["last_error_type"]) == ("dead_letter", "permanent")
    assert "login" in bad_job["last_error"]
    assert [j["status"] for s in good for j in world.fetch_jobs(s)] == ["completed"] * 2


def test_open_breaker_skips_the_store_while_others_proceed(
    world: FetchWorld, dovecot: DovecotServer
) -> None:
    good_user = new_user(dovecot)
    good = world.add_store(good_user)
    bad = world.add_store(new_user(dovecot), password="not-the-password")

    for run in range(1, FAILURE_THRESHOLD + 1):
        dovecot.deliver(good_user.name, [make_message(run, tag="brk")])
        summary = world.run()
        assert summary["stores_failed"] == 1
        assert summary["stored"] == 1
    breaker = world.breaker(bad)
    assert breaker is not None
    assert (breaker["state"], breaker["consecutive_failures"]) == ("open", FAILURE_THRESHOLD)
    assert len(world.events(bad, "fetch.store_failed")) == FAILURE_THRESHOLD

    dovecot.deliver(good_user.name, [make_message(99, tag="brk")])
    summary = world.run()

    assert summary["stores_breaker_open"] == 1
    assert summary["stores_failed"] == 0
    assert summary["stores_ok"] == 1
    assert summary["stored"] == 1
    # Skipped, not tried: no new failure event, the count is unchanged.
    assert len(world.events(bad, "fetch.store_failed")) == FAILURE_THRESHOLD
    assert world.breaker(bad)["consecutive_failures"] == FAILURE_THRESHOLD  # type: ignore[index]
    assert len(world.messages(good)) == FAILURE_THRESHOLD + 1
    world.assert_one_job_per_message(good)


def test_large_mailbox_fetches_only_the_new_ten(world: FetchWorld, dovecot: DovecotServer) -> None:
    user = new_user(dovecot)
    store_id = world.add_store(user)
    dovecot.deliver(user.name, (make_message(n, tag="big") for n in range(1, 5001)))
    status = dovecot.status(user.name)  # also makes Dovecot index the 5,000 files once
    assert (status.messages, status.uidnext) == (5000, 5001)
    # The first 5,000 count as fetched before: the position is set through the SQL API.
    world.base.ingest_messages(store_id, "INBOX", status.uidvalidity, 5000, [])
    dovecot.deliver(user.name, [make_message(n, tag="big") for n in range(5001, 5011)])

    started = time.monotonic()
    summary = world.run()
    elapsed = time.monotonic() - started
    print(f"\nMEASURED 5,000-message mailbox, 10 new: {elapsed:.3f} s")

    assert summary["fetched"] == summary["stored"] == 10
    assert [m["imap_uid"] for m in world.messages(store_id)] == list(range(5001, 5011))
    assert world.stored_ids(store_id) == [f"<big.{n}@example.com>" for n in range(5001, 5011)]
    world.assert_one_job_per_message(store_id)
    assert world.mailbox_state(store_id)["last_uid"] == 5010  # type: ignore[index]


def test_per_store_limit_takes_the_oldest_first(world: FetchWorld, dovecot: DovecotServer) -> None:
    # A backlog beyond the per-job bound is drained by follow-up jobs, oldest first, each job
    # taking at most the bound; a run goes on until the mailbox is drained.
    user = new_user(dovecot)
    store_id = world.add_store(user)
    dovecot.deliver(user.name, [make_message(n, tag="lim") for n in range(1, 121)])

    summary = world.run(max_per_store=50)
    again = world.run(max_per_store=50)

    assert (summary["stored"], summary["fetch_jobs"]) == (120, 3)
    assert (again["stored"], again["fetch_jobs"]) == (0, 1)
    jobs = world.fetch_jobs(store_id)
    # The second run's job found nothing: it ran (fetch_jobs == 1) and was not kept.
    assert [(j["status"], j["result"]["stored"], j["result"]["more"]) for j in jobs] == [
        ("completed", 50, True),
        ("completed", 50, True),
        ("completed", 20, False),
    ]
    by_uid = sorted(world.messages(store_id), key=lambda m: m["imap_uid"])
    assert [m["imap_uid"] for m in by_uid] == list(range(1, 121))
    # Oldest first: each job's messages were stored before the next job's.
    received = [m["received_at"] for m in by_uid]
    assert received == sorted(received)
    followed = [
        e["detail"]["reason"]
        for j in jobs
        for e in world.events(store_id, "job.enqueued")
        if e["job_id"] == j["id"]
    ]
    assert followed == ["backlog", "backlog"]  # the tick's own jobs write no event
    world.assert_one_job_per_message(store_id)


def test_oversized_message_is_recorded_skipped_and_passed(
    world: FetchWorld, dovecot: DovecotServer
) -> None:
    user = new_user(dovecot)
    store_id = world.add_store(user)
    big = make_message(2, tag="size", body="x" * 5000)
    dovecot.deliver(user.name, [make_message(1, tag="size"), big, make_message(3, tag="size")])

    summary = world.run(max_message_bytes=2000)

    assert summary["fetched"] == 3
    assert summary["stored"] == 2
    assert summary["skipped"] == 1
    assert summary["jobs_enqueued"] == 2
    messages = {m["message_id"]: m for m in world.messages(store_id)}
    oversized = messages["<size.2@example.com>"]
    assert oversized["skip_reason"] == "oversized"
    assert oversized["size_bytes"] == len(big)
    assert oversized["subject"] == "Question 2"  # the header was read
    assert oversized["body_text"] == ""
    world.assert_one_job_per_message(store_id)
    job_targets = {str(j["payload"]["message_id"]) for j in world.jobs(store_id)}
    assert str(oversized["id"]) not in job_targets
    (skipped,) = world.events(store_id, "message.skipped")
    assert skipped["detail"]["reason"] == "oversized"
    assert world.mailbox_state(store_id)["last_uid"] == 3  # type: ignore[index]
    # Not retried: the next run starts after it.
    assert world.run(max_message_bytes=2000)["fetched"] == 0


def test_reply_joins_its_conversation_and_a_stranger_does_not(
    world: FetchWorld, dovecot: DovecotServer
) -> None:
    user = new_user(dovecot)
    store_id = world.add_store(user)
    first = make_message(1, tag="thr", sender="ana@example.com")
    same_batch_reply = make_message(
        2, tag="thr", sender="Ana@Example.com", in_reply_to="<thr.1@example.com>"
    )
    other = make_message(3, tag="thr", sender="bob@example.com")
    dovecot.deliver(user.name, [first, same_batch_reply, other])
    world.run()

    dovecot.deliver(
        user.name,
        [
            make_message(4, tag="thr", sender="ana@example.com", in_reply_to="<thr.2@example.com>"),
            # Knowing Ana's Message-ID must not put a stranger into her conversation.
            make_message(5, tag="thr", sender="eve@example.com", in_reply_to="<thr.1@example.com>"),
        ],
    )
    world.run()

    conversation = {m["message_id"]: m["conversation_id"] for m in world.messages(store_id)}
    ana = conversation["<thr.1@example.com>"]
    assert conversation["<thr.2@example.com>"] == ana
    assert conversation["<thr.4@example.com>"] == ana
    assert conversation["<thr.3@example.com>"] != ana
    assert conversation["<thr.5@example.com>"] != ana
    assert len(set(conversation.values())) == 3
    world.assert_one_job_per_message(store_id)
    received = {e["detail"]["uid"]: e["detail"]["new_conversation"] for e in
                world.events(store_id, "message.received")}
    assert received == {1: True, 2: False, 3: True, 4: False, 5: True}


def test_seen_flags_are_left_alone(world: FetchWorld, dovecot: DovecotServer) -> None:
    user = new_user(dovecot)
    world.add_store(user)
    dovecot.deliver(user.name, [make_message(1, tag="seen")])
    dovecot.deliver(user.name, [make_message(2, tag="seen")], flags=["\\Seen"])
    dovecot.deliver(user.name, [make_message(3, tag="seen")], flags=["\\Flagged"])
    before = {m.uid: m.flags for m in dovecot.list_folder(user.name)}

    assert world.run()["stored"] == 3

    after = {m.uid: m.flags for m in dovecot.list_folder(user.name)}
    assert after == before
    assert "\\Seen" not in after[1] and "\\Seen" in after[2] and "\\Seen" not in after[3]


def test_realistic_samples_are_each_stored_once(world: FetchWorld, dovecot: DovecotServer) -> None:
    user = new_user(dovecot)
    store_id = world.add_store(user)
    names = sample_names()
    dovecot.deliver(user.name, [load_eml(name, crlf=True) for name in names])

    summary = world.run()

    assert summary["errors"] == []
    assert summary["fetched"] == summary["stored"] == len(names)
    messages = world.messages(store_id)
    assert len({m["message_id"] for m in messages}) == len(names)
    by_uid = {m["imap_uid"]: m for m in messages}
    pt = by_uid[names.index("customer_pt_iso8859.eml") + 1]
    assert pt["subject"] == "Onde está meu pedido #1234?"
    assert pt["from_address"] == "joao.silva@uol.com.br"
    no_id = by_uid[names.index("no_message_id.eml") + 1]
    assert no_id["message_id"].endswith("@synthetic.invalid>")
    world.assert_one_job_per_message(store_id)
    # A synthetic Message-ID is stable, so a second copy is a duplicate, not a new message.
    dovecot.deliver(user.name, [load_eml("no_message_id.eml", crlf=True)])
    again = world.run()
    assert (again["stored"], again["duplicates"]) == (0, 1)


def test_spent_budget_starts_no_store(world: FetchWorld, dovecot: DovecotServer) -> None:
    users = [new_user(dovecot) for _ in range(2)]
    stores = [world.add_store(u) for u in users]
    for user in users:
        dovecot.deliver(user.name, [make_message(1, tag="budget")])

    summary = world.run(budget=0)

    assert summary["stores"] == 2
    assert summary["stores_not_started"] == 2
    assert summary["fetched"] == summary["stored"] == 0
    for store_id in stores:
        assert world.messages(store_id) == []
        assert world.mailbox_state(store_id) is None
        assert world.breaker(store_id) is None


# -- a mailbox's history is never answered ---------------------------------------------------


def test_connected_store_leaves_the_mailbox_history_alone(
    world: FetchWorld, dovecot: DovecotServer
) -> None:
    user = new_user(dovecot)
    now = datetime.now(UTC)
    history = [
        (make_message(n, tag="hist"), now - timedelta(days=400) + timedelta(hours=n))
        for n in range(1, 191)
    ]
    # Shortly before connecting: the day search still finds these, INTERNALDATE rules them out.
    history += [
        (make_message(n, tag="hist"), now - timedelta(minutes=250 - n)) for n in range(191, 201)
    ]
    append_dated(dovecot, user.name, history)
    store_id = world.add_store(user)
    log = ImapLog()

    started = time.monotonic()
    baseline = world.run(opener=log.opener())
    elapsed = time.monotonic() - started
    print(f"\nMEASURED first fetch of a 200-message history: {elapsed:.3f} s, "
          f"{len(log.searches)} search, {len(log.fetches)} fetch")

    assert baseline["stores_ok"] == 1
    assert baseline["fetched"] == baseline["stored"] == baseline["jobs_enqueued"] == 0
    assert baseline["left_alone"] == 200
    assert world.messages(store_id) == [] and world.jobs(store_id) == []
    state = world.mailbox_state(store_id)
    assert state is not None and state["last_uid"] == 200
    (event,) = world.events(store_id, "fetch.baseline")
    assert (event["detail"]["left_alone"], event["detail"]["last_uid"]) == (200, 200)
    # One search; only the ten from the connection's day had their dates read; no body at all.
    assert len(log.searches) == 1 and "SINCE" in log.searches[0]
    assert log.fetches == [(list(range(191, 201)), ["INTERNALDATE", "RFC822.SIZE"])]

    dovecot.deliver(user.name, [make_message(n, tag="hist") for n in (201, 202, 203)])
    after = world.run()

    assert after["fetched"] == after["stored"] == after["jobs_enqueued"] == 3
    assert world.stored_ids(store_id) == [f"<hist.{n}@example.com>" for n in (201, 202, 203)]
    world.assert_one_job_per_message(store_id)
    assert world.mailbox_state(store_id)["last_uid"] == 203  # type: ignore[index]
    assert len(world.events(store_id, "fetch.baseline")) == 1


def test_uidvalidity_change_on_a_large_folder_reads_only_the_new_mail(
    world: FetchWorld, dovecot: DovecotServer
) -> None:
    user = new_user(dovecot)
    folder = "Support"
    tag = f"resync-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC) - timedelta(days=60)
    history = [(make_message(n, tag=tag), start + timedelta(minutes=n)) for n in range(1, 2001)]
    append_dated(dovecot, user.name, history, folder)
    store_id = world.add_store(user, folder=folder)

    started = time.monotonic()
    baseline = world.run()
    baseline_seconds = time.monotonic() - started
    assert (baseline["stored"], baseline["left_alone"]) == (0, 2000)
    old_state = world.mailbox_state(store_id, folder)
    assert old_state is not None and old_state["last_uid"] == 2000

    # A server migration: the folder is rebuilt with the same mail and dates, and renumbered.
    with dovecot.client(user.name) as client:
        client.delete_folder(folder)
    append_dated(dovecot, user.name, history, folder)
    dovecot.append(user.name, make_message(2001, tag=tag), folder=folder)
    log = ImapLog()

    started = time.monotonic()
    summary = world.run(opener=log.opener())
    elapsed = time.monotonic() - started
    print(f"\nMEASURED 2,000-message folder: baseline {baseline_seconds:.3f} s; "
          f"after a UIDVALIDITY change with 1 new message {elapsed:.3f} s")

    assert summary["fetched"] == summary["stored"] == 1
    assert summary["duplicates"] == 0
    assert world.stored_ids(store_id) == [f"<{tag}.2001@example.com>"]
    world.assert_one_job_per_message(store_id)
    state = world.mailbox_state(store_id, folder)
    assert state is not None
    assert state["uidvalidity"] != old_state["uidvalidity"]
    assert state["last_uid"] == 2001
    (event,) = world.events(store_id, "fetch.uidvalidity_changed")
    assert event["detail"]["previous_uidvalidity"] == old_state["uidvalidity"]
    assert event["detail"]["left_alone"] == 2000
    # Not a re-read of the folder: one search, then the one new message's date and body.
    assert len(log.searches) == 1
    assert log.uids_read("INTERNALDATE") == [2001]
    assert log.uids_read("BODY.PEEK[]") == [2001]
    assert world.run()["fetched"] == 0


def test_fetch_emails_over_http_stores_the_messages(
    world: FetchWorld, dovecot: DovecotServer, database_url: str
) -> None:
    user = new_user(dovecot)
    store_id = world.add_store(user)
    dovecot.deliver(user.name, [make_message(n, tag="http") for n in (1, 2)])
    settings = settings_for(database_url, world.ca_file, FETCH_CONCURRENCY="2")
    scoped = ScopedDatabase(dbmod.connect(settings).transport, [store_id])
    services = build_services(settings, database=scoped)
    app = create_app(settings, services=services)
    # The real app starts a process run after a fetch that stored mail; in this shared database
    # it would claim other tests' jobs, so this test stops at the fetch.
    get_state(app).manager.on_finish.clear()
    client = app.test_client()
    auth = {"Authorization": f"Bearer {WORKER_SECRET}"}
    try:
        assert client.post("/fetch-emails").status_code == 401
        response = client.post("/fetch-emails", headers=auth)
        assert response.status_code == 202
        run_id = response.get_json()["run_id"]

        record = poll_run(lambda: client.get(f"/runs/{run_id}", headers=auth).get_json())
    finally:
        get_state(app).manager.shutdown(grace_seconds=RUN_WAIT)
        services.close()

    assert record["status"] == "succeeded"
    assert record["kind"] == "fetch"
    assert record["summary"]["stored"] == 2
    assert record["summary"]["stores_ok"] == 1
    assert world.stored_ids(store_id) == ["<http.1@example.com>", "<http.2@example.com>"]
    world.assert_one_job_per_message(store_id)


def poll_run(get: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """GET /runs/<id> until the run is no longer running (bounded, so a hang fails the test)."""
    deadline = time.monotonic() + RUN_WAIT
    while True:
        record = get()
        if record["status"] != "running" or time.monotonic() > deadline:
            return record
        time.sleep(0.05)


class TricklingImapServer:
    """A loopback IMAP server that logs anyone in, then answers EXAMINE with an endless trickle
    of untagged lines: each socket read succeeds, so only a whole-fetch time limit stops it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.stop = threading.Event()
        self.examining = threading.Event()
        self.disconnected = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, conn.makefile("rb") as reader:
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] trickle ready\r\n")
            try:
                for line in reader:
                    tag, _, rest = line.decode().strip().partition(" ")
                    command = rest.split(" ", 1)[0].upper()
                    if command == "CAPABILITY":
                        conn.sendall(f"* CAPABILITY IMAP4rev1\r\n{tag} OK done\r\n".encode())
                    elif command == "LOGIN":
                        conn.sendall(f"{tag} OK logged in\r\n".encode())
                    elif command in ("EXAMINE", "SELECT"):
                        self.examining.set()
                        while not self.stop.wait(0.1):
                            conn.sendall(b"* OK still opening the folder\r\n")
                    elif command == "LOGOUT":
                        conn.sendall(f"* BYE\r\n{tag} OK bye\r\n".encode())
                        return
                    else:
                        conn.sendall(f"{tag} BAD unsupported\r\n".encode())
            except OSError:
                pass  # the client cut the connection: what the test waits for
            finally:
                self.disconnected.set()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


def test_store_time_limit_cuts_a_trickling_server(
    world: FetchWorld, dovecot: DovecotServer
) -> None:
    good_user = new_user(dovecot)
    good = world.add_store(good_user)
    dovecot.deliver(good_user.name, [make_message(1, tag="slow")])
    server = TricklingImapServer()
    slow = world.add_store(new_user(dovecot), tls="plain", port=server.port)
    outcome: dict[str, Any] = {}
    try:
        runner = threading.Thread(
            target=lambda: outcome.update(
                world.run(store_timeout_seconds=1.0, imap_timeout_seconds=IMAP_TIMEOUT)
            ),
            daemon=True,
        )
        runner.start()
        runner.join(RUN_WAIT)  # a safety net: without a time limit the run never ends
        assert not runner.is_alive(), "the run is still held by the trickling server"
        assert server.disconnected.wait(RUN_WAIT)  # the worker hung up, not the server
    finally:
        server.close()

    assert outcome["stores_ok"] == 1
    assert outcome["stores_failed"] == 1
    assert outcome["stored"] == 1
    (error,) = outcome["errors"]
    assert error["store_id"] == slow
    assert error["error_type"] == "transient"
    assert "store time limit" in error["error"]
    assert len(world.events(slow, "fetch.store_failed")) == 1
    assert world.breaker(slow)["consecutive_failures"] == 1  # type: ignore[index]
    assert world.stored_ids(good) == ["<slow.1@example.com>"]


def test_shutdown_cuts_a_store_that_is_still_being_read(
    world: FetchWorld, dovecot: DovecotServer
) -> None:
    good_user = new_user(dovecot)
    good = world.add_store(good_user)
    dovecot.deliver(good_user.name, [make_message(1, tag="stop")])
    server = TricklingImapServer()
    slow = world.add_store(new_user(dovecot), tls="plain", port=server.port)
    # Only a stop can end the slow store: its time limit is the (long) run budget.
    manager = runs.RunManager(
        {
            "fetch": lambda budget: fetch_jobs.run_fetch(
                world.scoped(), budget, options=world.options()
            )
        },
        budget_seconds=RUN_BUDGET,
    )
    try:
        record = manager.start("fetch")
        assert record is not None
        assert server.examining.wait(RUN_WAIT)
        wait_for(lambda: len(world.messages(good)) == 1)
        # What gunicorn's graceful stop does (worker_int / worker_exit call this).
        all_ended = manager.shutdown(grace_seconds=runs.SHUTDOWN_GRACE_SECONDS)
        assert server.disconnected.wait(RUN_WAIT)  # the worker hung up, not the server
    finally:
        server.close()

    assert all_ended, "the run outlived the shutdown grace period"
    finished = manager.get(record.id)
    assert finished is not None and finished.status == "succeeded" and finished.stop_requested
    summary = finished.summary
    assert (summary["stores_ok"], summary["stores_stopped"], summary["stored"]) == (1, 1, 1)
    (error,) = summary["errors"]
    assert error["store_id"] == slow and "stopped" in error["error"]
    # Not the mailbox's fault: no failure event, nothing counted against its breaker.
    assert world.events(slow, "fetch.store_failed") == []
    assert world.breaker(slow) is None
    assert world.stored_ids(good) == ["<stop.1@example.com>"]


def wait_for(condition: Callable[[], bool]) -> None:
    """Poll until condition holds (bounded, so a hang fails the test)."""
    deadline = time.monotonic() + RUN_WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)


def test_unusable_ca_file_fails_the_run_without_touching_any_store(
    world: FetchWorld, dovecot: DovecotServer, tmp_path: Any
) -> None:
    user = new_user(dovecot)
    store_id = world.add_store(user)
    dovecot.deliver(user.name, [make_message(1, tag="ca")])
    broken = tmp_path / "ca.pem"
    broken.write_text("not a certificate\n")

    with pytest.raises(ConfigError, match="EXTRA_CA_FILE"):
        world.run(ca_file=str(broken))

    assert world.breaker(store_id) is None
    assert world.events(store_id, "fetch.store_failed") == []
    assert world.messages(store_id) == []
    # Once the deployment is fixed, nothing was lost.
    assert world.run()["stored"] == 1
