"""Fetching as jobs under concurrency: real Postgres, Dovecot, separate sessions and processes.

Concurrent ticks make one fetch job per store; two workers share the stores without reading one
mailbox at once and store every message once; a worker SIGKILLed in the middle of a mailbox loses
nothing (its lease expires and another worker reads on from the stored UID); a slow store holds
one slot, not the others; ticks never deadlock with lease heartbeats; the cron path reaches a
real worker; a process run's fetch lane reads what another machine's tick asked for.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import DictRow, dict_row
from werkzeug.serving import make_server

from tests.integration import test_cron, test_fetch
from tests.integration.test_cron import cron_command, response_of, set_secret
from tests.integration.test_fetch import (
    WORKER_SECRET,
    FetchWorld,
    ScopedDatabase,
    TricklingImapServer,
    make_message,
    new_user,
    settings_for,
)
from worker import db as dbmod
from worker import fetch, fetch_jobs, imap
from worker.app import create_app, get_state
from worker.devstack.dovecot import DovecotServer
from worker.queue.handlers import Handlers, JobRun
from worker.queue.lanes import Lane, run_lanes
from worker.queue.outcome import Complete, Outcome
from worker.queue.runner import RunnerOptions
from worker.runs import Budget
from worker.services import build_services

pytestmark = pytest.mark.integration

# test_fetch's fixtures: its stores, scoped database and clean-up; test_cron's Vault secrets.
base_database = test_fetch.base_database
world = test_fetch.world
vault_secrets = test_cron.vault_secrets

ROOT = Path(__file__).resolve().parents[2]
WAIT = 120.0  # seconds a test waits for a condition before failing (never reached on success)
KILL_LEASE = 3  # seconds: the killed worker's lease, so the takeover comes quickly


def wait_until(condition: Any, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)


def live_fetch_jobs(sql: psycopg.Connection[DictRow], store_ids: list[str]) -> dict[str, int]:
    rows = sql.execute(
        "select store_id::text as s, count(*) as n from public.job_queue"
        " where job_type = 'fetch_mailbox' and status in ('pending', 'processing')"
        " and store_id = any(%s::uuid[]) group by store_id",
        (store_ids,),
    ).fetchall()
    return {r["s"]: int(r["n"]) for r in rows}


def test_concurrent_ticks_enqueue_one_job_per_store(
    world: FetchWorld, dovecot: DovecotServer, database_url: str
) -> None:
    stores = [world.add_store(new_user(dovecot)) for _ in range(5)]
    callers = 8
    barrier = threading.Barrier(callers)
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def tick() -> None:
        with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
            barrier.wait()
            row = conn.execute(
                "select public.enqueue_fetch_jobs(%s::uuid[]) as r", (stores,)
            ).fetchone()
            assert row is not None
            with lock:
                results.append(row["r"])

    threads = [threading.Thread(target=tick) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)

    assert len(results) == callers
    assert sum(r["enqueued"] for r in results) == len(stores)  # each store's job made once
    assert live_fetch_jobs(world.sql, stores) == dict.fromkeys(stores, 1)

    # Ticks while the jobs run add no second job; each running one is followed when it ends.
    claimed = world.sql.execute(
        "select * from public.dequeue_jobs('tick-test', 10, 60, array['fetch_mailbox'])"
        " where store_id = any(%s::uuid[])",
        (stores,),
    ).fetchall()
    assert len(claimed) == len(stores)
    barrier.reset()
    results.clear()
    threads = [threading.Thread(target=tick) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert sum(r["enqueued"] for r in results) == 0
    assert {r["rerun"] for r in results} == {len(stores)}
    assert live_fetch_jobs(world.sql, stores) == dict.fromkeys(stores, 1)
    followed = [
        world.sql.execute(
            "select public.finish_fetch_job(%s, 'tick-test', '{}', false) as r", (c["id"],)
        ).fetchone()["r"]  # type: ignore[index]
        for c in claimed
    ]
    assert {(f["completed"], f["reason"]) for f in followed} == {(True, "rerun")}
    assert live_fetch_jobs(world.sql, stores) == dict.fromkeys(stores, 1)


class SessionLog:
    """When each store's mailbox was open, and by which thread (one IMAP session per fetch)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sessions: list[tuple[str, str, float, float]] = []  # user, thread, opened, closed

    def opener(self) -> fetch.MailboxOpener:
        log = self

        class Logged:
            def __init__(self, args: Any, kwargs: Any) -> None:
                self.user = str(args[3])
                self.inner = imap.open_mailbox(*args, **kwargs)

            def __enter__(self) -> Any:
                self.opened = time.monotonic()
                return self.inner.__enter__()

            def __exit__(self, *exc: Any) -> Any:
                try:
                    return self.inner.__exit__(*exc)
                finally:
                    with log.lock:
                        log.sessions.append(
                            (self.user, threading.current_thread().name, self.opened,
                             time.monotonic())
                        )

        def open_mailbox(*args: Any, **kwargs: Any) -> Any:
            return Logged(args, kwargs)

        return open_mailbox


def test_two_workers_share_the_stores_and_store_every_message_once(
    world: FetchWorld, dovecot: DovecotServer
) -> None:
    users = [new_user(dovecot) for _ in range(6)]
    stores = [world.add_store(u) for u in users]
    expected: dict[str, int] = {}
    for i, (user, store_id) in enumerate(zip(users, stores, strict=True)):
        count = 30 + 10 * i  # 30..80 messages; the per-job bound 20 leaves follow-ups
        dovecot.deliver(user.name, [make_message(n, tag=f"two{i}") for n in range(1, count + 1)])
        expected[store_id] = count
    log = SessionLog()
    summaries: list[dict[str, Any]] = []

    def drained() -> bool:
        return sum(len(world.messages(s)) for s in stores) == sum(expected.values())

    def worker(name: str) -> None:
        # Like a machine woken again and again: a run that found every due job claimed by the
        # other (SKIP LOCKED) ends at once, and the next one takes what is due by then.
        deadline = time.monotonic() + WAIT
        while not drained() and time.monotonic() < deadline:
            summary = world.run(opener=log.opener(), concurrency=2, max_per_store=20)
            summaries.append({"name": name, **summary})

    threads = [threading.Thread(target=worker, args=(f"w{n}",), name=f"w{n}") for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not any(t.is_alive() for t in threads)

    for store_id, count in expected.items():
        ids = world.stored_ids(store_id)
        assert len(ids) == len(set(ids)) == count  # every message stored, none twice
        world.assert_one_job_per_message(store_id)
        assert world.mailbox_state(store_id)["last_uid"] == count  # type: ignore[index]
        jobs = world.fetch_jobs(store_id)
        assert {j["status"] for j in jobs} == {"completed"}
        assert sum(j["result"]["stored"] for j in jobs) == count
    # Both workers fetched, and no mailbox was ever open in two sessions at once.
    thread_of = {s["worker_id"]: s["name"] for s in summaries}
    done_by = {str(j["locked_by"]) for s in stores for j in world.fetch_jobs(s)}
    assert done_by <= set(thread_of)
    assert {thread_of[w] for w in done_by} == {"w1", "w2"}
    by_user: dict[str, list[tuple[float, float]]] = {}
    for user, _, opened, closed in log.sessions:
        by_user.setdefault(user, []).append((opened, closed))
    assert len(by_user) == len(stores)
    for spans in by_user.values():
        spans.sort()
        for (_, closed), (opened, _) in itertools.pairwise(spans):
            assert opened >= closed, "a mailbox was read by two workers at once"
    # The same from the jobs themselves: a store's fetch jobs ran one after another.
    for store_id in stores:
        runs = sorted((j["started_at"], j["completed_at"]) for j in world.fetch_jobs(store_id))
        for (_, ended), (began, _) in itertools.pairwise(runs):
            assert began >= ended


CHILD = """
import sys
from worker import db as dbmod, fetch, fetch_jobs
from worker.config import load_settings
from worker.queue.runner import run_queue
from worker.runs import Budget

settings = load_settings()
database = dbmod.connect(settings)
options = fetch.FetchOptions.from_settings(settings)
handler = fetch_jobs.FetchHandler(database, options)
run_queue(database, fetch_jobs.fetch_handlers(handler), Budget(600),
          options=fetch_jobs.runner_options(options), worker_id=sys.argv[1])
"""


@pytest.fixture
def child_env(database_url: str, world: FetchWorld) -> Iterator[dict[str, str]]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        WORKER_SECRET=WORKER_SECRET,
        EXTRA_CA_FILE=world.ca_file,
        LEASE_SECONDS=str(KILL_LEASE),
        FETCH_MAX_PER_STORE="5000",
        STORE_TIMEOUT_SECONDS="300",
        PYTHONPATH=str(ROOT),
    )
    yield env


def test_a_worker_killed_mid_fetch_loses_nothing(
    world: FetchWorld, dovecot: DovecotServer, child_env: dict[str, str]
) -> None:
    user = new_user(dovecot)
    store_id = world.add_store(user)
    total = 1500
    tag = f"kill-{uuid.uuid4().hex[:8]}"
    dovecot.deliver(user.name, (make_message(n, tag=tag) for n in range(1, total + 1)))
    # A baseline first (the store's first fetch), so the mail above counts as new.
    world.base.ingest_messages(store_id, "INBOX", dovecot.status(user.name).uidvalidity, 0, [])
    world.scoped(store_id).enqueue_fetch_jobs()
    victim = f"victim-{uuid.uuid4().hex[:8]}"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, victim], env=child_env, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        def mid_fetch() -> bool:
            state = world.mailbox_state(store_id)
            return state is not None and 0 < int(state["last_uid"]) < total

        wait_until(mid_fetch, timeout=WAIT)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(WAIT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(WAIT)
    (job,) = world.fetch_jobs(store_id)
    assert (job["status"], job["locked_by"]) == ("processing", victim)
    # Another worker takes the job over once its lease has expired, and reads on from the UID.
    wait_until(lambda: world.sql.execute(
        "select locked_until < now() as expired from public.job_queue where id = %s",
        (job["id"],),
    ).fetchone()["expired"])  # type: ignore[index]
    # Read once the lease is over: an ingest the dead worker had sent may still have committed.
    at_kill = world.mailbox_state(store_id)["last_uid"]  # type: ignore[index]
    assert 0 < at_kill < total, "the worker was not killed in the middle of the mailbox"
    stored_at_kill = len(world.messages(store_id))
    assert stored_at_kill == at_kill  # the UID never ran ahead of the stored messages
    summary = world.run(store_id, max_per_store=5000)

    ids = world.stored_ids(store_id)
    assert len(ids) == len(set(ids)) == total
    assert summary["stored"] == total - stored_at_kill and summary["duplicates"] == 0
    assert world.mailbox_state(store_id)["last_uid"] == total  # type: ignore[index]
    world.assert_one_job_per_message(store_id)
    (expired,) = world.events(store_id, "job.lease_expired")
    assert expired["job_id"] == job["id"] and expired["detail"]["worker_id"] == victim
    taken_over = world.sql.execute(
        "select status, attempt_count, locked_by from public.job_queue where id = %s",
        (job["id"],),
    ).fetchone()
    assert taken_over is not None
    assert (taken_over["status"], taken_over["attempt_count"]) == ("completed", 2)
    assert taken_over["locked_by"] == summary["worker_id"]


def test_a_slow_store_holds_one_slot_and_the_others_are_fetched_meanwhile(
    world: FetchWorld, dovecot: DovecotServer
) -> None:
    users = [new_user(dovecot) for _ in range(4)]
    good = [world.add_store(u) for u in users]
    for i, user in enumerate(users):
        dovecot.deliver(user.name, [make_message(1, tag=f"fair{i}")])
    server = TricklingImapServer()
    slow = world.add_store(new_user(dovecot), tls="plain", port=server.port)
    try:
        summary = world.run(concurrency=2, store_timeout_seconds=5.0)
    finally:
        server.close()

    assert (summary["stores_ok"], summary["stores_failed"], summary["stored"]) == (4, 1, 4)
    (slow_job,) = world.fetch_jobs(slow)
    # The slow store's job is retried on its own policy (30 s), holding nothing meanwhile...
    assert (slow_job["status"], slow_job["attempt_count"]) == ("pending", 1)
    assert "store time limit" in slow_job["last_error"]
    wait = world.sql.execute(
        "select extract(epoch from next_retry_at - last_error_at) as s from public.job_queue"
        " where id = %s",
        (slow_job["id"],),
    ).fetchone()
    assert wait is not None and 30 <= float(wait["s"]) <= 33
    # ...and every other store was fetched while it held its slot, not after it.
    for store_id in good:
        (job,) = world.fetch_jobs(store_id)
        assert job["status"] == "completed"
        assert job["completed_at"] < slow_job["last_error_at"]
        assert len(world.messages(store_id)) == 1


def test_the_fetch_cron_reaches_the_worker_and_every_store_is_fetched(
    world: FetchWorld,
    dovecot: DovecotServer,
    database_url: str,
    db: psycopg.Connection[DictRow],
    vault_secrets: None,
) -> None:
    # pg_cron's own command -> call_worker -> pg_net -> /fetch-emails -> fetch jobs -> mail.
    users = [new_user(dovecot) for _ in range(3)]
    stores = [world.add_store(u) for u in users]
    for i, user in enumerate(users):
        dovecot.deliver(user.name, [make_message(n, tag=f"cron{i}") for n in (1, 2)])
    settings = settings_for(database_url, world.ca_file)
    scoped = ScopedDatabase(dbmod.connect(settings).transport, stores)
    services = build_services(settings, database=scoped)
    app = create_app(settings, services=services)
    # The process run a fetch starts would claim other tests' jobs in this shared database.
    get_state(app).manager.on_finish.clear()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        set_secret(db, "worker_url", f"http://127.0.0.1:{server.server_port}")
        set_secret(db, "worker_secret", WORKER_SECRET)
        row = db.execute(cron_command(db, "fetch-emails")).fetchone()
        assert row is not None
        response = response_of(db, next(iter(row.values())))
        assert response["status_code"] == 202, response
        wait_until(lambda: sum(len(world.messages(s)) for s in stores) == 6)
        wait_until(lambda: all(
            [j["status"] for j in world.fetch_jobs(s)] == ["completed"] for s in stores
        ))
    finally:
        server.shutdown()
        get_state(app).manager.shutdown(grace_seconds=WAIT)
        services.close()

    for i, store_id in enumerate(stores):
        assert world.stored_ids(store_id) == [f"<cron{i}.{n}@example.com>" for n in (1, 2)]
        world.assert_one_job_per_message(store_id)
        (job,) = world.fetch_jobs(store_id)
        assert job["result"]["stored"] == 2


def test_ticks_and_lease_heartbeats_never_deadlock(
    world: FetchWorld, dovecot: DovecotServer, database_url: str
) -> None:
    # Ticks come while the worker holding the fetch jobs renews their leases (extend_lease locks
    # them in heap order). A tick that locked running jobs (to mark them) in another order
    # deadlocked with it; the tick locks no job row, so none may be aborted.
    stores = [world.add_store(new_user(dovecot)) for _ in range(12)]
    world.scoped(*stores).enqueue_fetch_jobs()
    held = world.sql.execute(
        "select id from public.dequeue_jobs('hb-test', 50, 300, array['fetch_mailbox'])"
        " where store_id = any(%s::uuid[])",
        (stores,),
    ).fetchall()
    job_ids = sorted(str(r["id"]) for r in held)
    assert len(job_ids) == len(stores)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def ticks() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            start.wait()
            for _ in range(40):
                conn.execute("select public.enqueue_fetch_jobs(%s::uuid[])", (stores,))

    def heartbeats() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            start.wait()
            for _ in range(120):
                conn.execute(
                    "select public.extend_lease('hb-test', %s::uuid[], 300)", (job_ids,)
                )

    def guarded(work: Any) -> None:
        try:
            work()
        except BaseException as exc:  # collected: a thread's exception would be lost
            errors.append(exc)

    threads = [
        threading.Thread(target=guarded, args=(work,))
        # One heartbeat: a job's lease is renewed by the one worker holding it.
        for work in (ticks, ticks, ticks, heartbeats)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)

    assert errors == []
    assert live_fetch_jobs(world.sql, stores) == dict.fromkeys(stores, 1)
    world.sql.execute(
        "delete from public.job_queue where id = any(%s::uuid[])", (job_ids,)
    )


class SlowPrivateJob:
    """An email-lane job of a private type that keeps the run busy for a while."""

    def handle(self, run: JobRun) -> Outcome:
        time.sleep(1.5)
        return Complete({"outcome": "done"})

    def dead_lettered(self, job: Any) -> None:
        pass


def test_a_process_run_reads_the_mailboxes_another_machines_tick_asked_for(
    world: FetchWorld, dovecot: DovecotServer
) -> None:
    users = [new_user(dovecot) for _ in range(3)]
    stores = [world.add_store(u) for u in users]
    for i, user in enumerate(users):
        dovecot.deliver(user.name, [make_message(n, tag=f"lane{i}") for n in (1, 2, 3)])
    # Machine A's tick; machine B's process run (email lane and fetch lane) reads the mail.
    assert world.scoped(*stores).enqueue_fetch_jobs()["enqueued"] == 3
    private = f"t_{uuid.uuid4().hex[:12]}"
    world.base.enqueue_job(private, {})
    email = Handlers()
    email.register(private, SlowPrivateJob())
    budget = Budget(WAIT)
    mailboxes = fetch_jobs.fetch_lane(world.scoped(*stores), world.options(), budget)
    assert mailboxes is not None
    summary = run_lanes(
        world.scoped(*stores),
        [Lane("email", email, RunnerOptions(concurrency=2, lease_seconds=30)), mailboxes],
        budget,
    )

    assert summary["lanes"]["email"]["outcomes"] == {"done": 1}
    assert summary["lanes"]["fetch"]["outcomes"] == {"ok": 3}
    for i, store_id in enumerate(stores):
        assert world.stored_ids(store_id) == [f"<lane{i}.{n}@example.com>" for n in (1, 2, 3)]
        (job,) = world.fetch_jobs(store_id)
        assert (job["status"], job["locked_by"]) == ("completed", summary["worker_id"])
