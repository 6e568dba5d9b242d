"""bench/faults: longer fault scenarios on the real stack, a ledger per scenario (issue 16).

    .venv/bin/python bench/faults.py [--emails 200] [--only pg-restart,sigkill,poison] [--json F]

It prepares its own database (scripts/local-db --fresh on PGPORT, database `faults`), starts a
real Dovecot and SMTP sink and the fake Claude and Shopify in this process, and runs the worker
as the container does (`python -m worker process`, a child process per run). Each scenario has
its own store and emails, injects one fault while the worker is answering them, then re-runs
the worker until every job has settled (completed or dead-lettered):

  pg-restart  Postgres restarted (pg_ctlcluster ... restart -m fast) once a fifth are sent
  sigkill     the worker SIGKILLed once a fifth are sent; later runs take its jobs over
  poison      every job has one attempt; the worker is SIGKILLed mid-run, so its in-flight
              jobs die on their last attempt and are dead-lettered by the next claim
  smtp-cut    the SMTP sink keeps the next 10 messages but cuts the connection before its 250
              (opt-in: --only smtp-cut); each reply is in doubt and, without a copy, held.
              The cuts open the store's SMTP breaker, so the rest wait out its cool-down and
              may not settle within SETTLE_TIMEOUT_SECONDS (counted as "lost": unsettled)

The ledger: emails; job outcomes; lost (a job not settled when the scenario gave up);
duplicates (a customer email answered more than once at the sink); in doubt (replies held
'delivery_in_doubt'); credits charged net of refunds vs replies sent (held replies stay charged);
seconds from the fault to the last settle. Then the store's server delivers each reply's trace
copy (the store's own address, an extra envelope recipient, decision 0017) to its Dovecot
mailbox and one `python -m worker fetch` reads them: "held" is the replies held as in doubt before
that fetch, "in doubt" after it, "by copy" the replies the copies confirmed. Never part of the test
run.
"""

from __future__ import annotations

import script_path  # noqa: F401  (first: swaps bench/ for the repository root on sys.path)

# isort: split

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from bench.common import DEFAULT_PGPORT, prepare_database, render_table, write_json
from worker import mime
from worker.db import Database
from worker.db.pg import PgTransport
from worker.devstack.dovecot import DovecotServer
from worker.devstack.fake_claude import TEST_API_KEY, FakeClaude
from worker.devstack.fake_shopify import TEST_ACCESS_TOKEN, FakeShopify, demo_catalogue
from worker.devstack.smtp_sink import SmtpSink
from worker.devstack.tls import create_test_ca

DATABASE = "faults"
WORKER_SECRET = "bench-faults-secret-0123456789"  # throwaway, loopback only
CUSTOMER = "john.miller@example.com"  # order #1002 in the demo catalogue
RUN_BUDGET_SECONDS = 20.0  # one worker run; a scenario runs the worker until all settle
SETTLE_TIMEOUT_SECONDS = 300.0  # a scenario gives up (and counts the rest as lost) after this
SMTP_CUTS = 10  # smtp-cut: this many sends lose their connection after DATA (kept, unanswered)
FAULT_AT_FRACTION = 0.2  # the fault is injected once this share of replies reached the sink
POLL_SECONDS = 0.2


@dataclass
class Ledger:
    scenario: str
    emails: int
    outcomes: dict[str, int]
    lost: int
    duplicates: int
    held_before_copies: int
    in_doubt: int
    confirmed_by_copy: int
    replies_sent: int
    credits_charged: int
    credits_refunded: int
    settle_seconds: float


@dataclass
class Stack:
    url: str
    pgport: int
    db: Database
    sql: psycopg.Connection[dict[str, Any]]
    dovecot: DovecotServer
    sink: SmtpSink
    claude: FakeClaude
    shopify: FakeShopify
    env: dict[str, str]


def customer_email(n: int, tag: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"John Miller <{CUSTOMER}>"
    msg["To"] = "support@shop.test"
    msg["Subject"] = f"Where is my order? ({tag} {n})"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=f"{tag}.customer.example")
    msg.set_content(f"Hi, where is my order #1002? Thanks, John ({tag} {n})")
    return msg.as_bytes()


def create_store(stack: Stack, name: str, emails: int) -> str:
    user = f"{name}@shop.test"
    stack.dovecot.add_user(user, "imap-bench-password")
    return stack.db.admin_create_store(
        {
            "name": name,
            "support_email": user,
            "imap_host": stack.dovecot.host,
            "imap_port": stack.dovecot.imaps_port,
            "imap_user": user,
            "imap_tls": "ssl",
            "smtp_host": stack.sink.host,
            "smtp_port": stack.sink.port,
            "smtp_user": stack.sink.username,
            "smtp_tls": stack.sink.tls_mode,
            "shopify_domain": "loja-demo.myshopify.com",
            "credits": emails,
        },
        {
            "imap_password": "imap-bench-password",
            "smtp_password": stack.sink.password,
            "shopify_token": TEST_ACCESS_TOKEN,
        },
    )


def ingest(stack: Stack, store_id: str, tag: str, emails: int) -> list[str]:
    rows = []
    for n in range(1, emails + 1):
        raw = customer_email(n, tag)
        row = mime.parse_message(raw, uid=n).to_ingest_json()
        row["size_bytes"] = len(raw)
        rows.append(row)
    job_ids: list[str] = []
    for start in range(0, len(rows), 100):
        batch = rows[start : start + 100]
        result = stack.db.ingest_messages(store_id, "INBOX", 1, start + len(batch), batch)
        job_ids += [str(j) for j in result.get("job_ids") or []]
    return job_ids


def start_worker(stack: Stack) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "process", "--budget", str(RUN_BUDGET_SECONDS)],
        env=stack.env,
        stdout=subprocess.DEVNULL,  # the run summary; the ledger reads the database instead
    )


def in_doubt(stack: Stack, store_id: str) -> int:
    row = stack.sql.execute(
        "select count(*) as n from public.replies where store_id = %s"
        " and hold_reason = 'delivery_in_doubt'",
        (store_id,),
    ).fetchone()
    return int(row["n"]) if row else 0


def deliver_copies_and_fetch(stack: Stack, tag: str) -> None:
    """What the store's server does with the trace copies, then the fetch that reads them."""
    user = f"{tag}@shop.test"
    copies = [m.data for m in stack.sink.messages if user in m.rcpt_tos]
    if copies:
        stack.dovecot.deliver(user, copies)
    fetch = subprocess.Popen(
        [sys.executable, "-m", "worker", "fetch", "--budget", str(RUN_BUDGET_SECONDS)],
        # One fetch reads every copy (cron's later runs would read the rest over time).
        env={**stack.env, "FETCH_MAX_PER_STORE": str(max(50, len(copies)))},
        stdout=subprocess.DEVNULL,
    )
    fetch.wait(timeout=RUN_BUDGET_SECONDS + 120)


def sent_for(stack: Stack, tag: str) -> int:
    return sum(1 for m in stack.sink.messages if f"({tag} " in m.data.decode(errors="replace"))


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def unsettled(stack: Stack, job_ids: list[str]) -> int:
    row = stack.sql.execute(
        "select count(*) as n from public.job_queue where id = any(%s::uuid[])"
        " and status not in ('completed', 'dead_letter')",
        (job_ids,),
    ).fetchone()
    return int(row["n"]) if row else len(job_ids)


def settle(stack: Stack, job_ids: list[str]) -> bool:
    """Run the worker (one run at a time, as cron would) until every job has settled."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
    while unsettled(stack, job_ids) and time.monotonic() < deadline:
        worker = start_worker(stack)
        worker.wait(timeout=RUN_BUDGET_SECONDS + 120)
        if unsettled(stack, job_ids):
            time.sleep(1.0)  # a job waiting out a dead worker's lease or a retry delay
    return unsettled(stack, job_ids) == 0


def pg_restart(stack: Stack) -> None:
    cluster = os.environ.get("FAULTS_PG_CLUSTER", f"15/port{stack.pgport}").split("/")
    subprocess.run(["pg_ctlcluster", cluster[0], cluster[1], "restart", "-m", "fast"], check=True)
    stack.sql.close()
    stack.sql = psycopg.connect(stack.url, autocommit=True, row_factory=dict_row)


def scenario(stack: Stack, name: str, emails: int, fault: str) -> Ledger:
    tag = f"{name}-{int(time.time())}"
    store_id = create_store(stack, tag, emails)
    job_ids = ingest(stack, store_id, tag, emails)
    if fault == "poison":
        stack.sql.execute(
            "update public.job_queue set max_attempts = 1 where id = any(%s::uuid[])", (job_ids,)
        )
    worker = start_worker(stack)
    wait_until(lambda: sent_for(stack, tag) >= emails * FAULT_AT_FRACTION, timeout=120)
    if fault == "pg-restart":
        pg_restart(stack)
    elif fault == "smtp-cut":
        stack.sink.drop_after_data(times=SMTP_CUTS)
    else:
        worker.send_signal(signal.SIGKILL)
    faulted_at = time.monotonic()
    worker.wait(timeout=RUN_BUDGET_SECONDS + 120)
    settled = settle(stack, job_ids)
    settle_seconds = time.monotonic() - faulted_at if settled else float("nan")
    held = in_doubt(stack, store_id)
    deliver_copies_and_fetch(stack, tag)
    return ledger(stack, name, tag, store_id, job_ids, settle_seconds, held)


def ledger(
    stack: Stack,
    name: str,
    tag: str,
    store_id: str,
    job_ids: list[str],
    settle_seconds: float,
    held_before_copies: int,
) -> Ledger:
    jobs = stack.sql.execute(
        "select status, result ->> 'outcome' as outcome from public.job_queue"
        " where id = any(%s::uuid[])",
        (job_ids,),
    ).fetchall()
    outcomes = Counter(
        j["outcome"] or j["status"] if j["status"] == "completed" else j["status"] for j in jobs
    )
    replies = stack.sql.execute(
        "select status, hold_reason from public.replies where store_id = %s", (store_id,)
    ).fetchall()
    credits = stack.sql.execute(
        "select coalesce(sum(-delta) filter (where reason = 'reply'), 0) as charged,"
        " coalesce(sum(delta) filter (where reason = 'refund'), 0) as refunded"
        " from public.credit_ledger where store_id = %s",
        (store_id,),
    ).fetchone()
    assert credits is not None
    confirmed = stack.sql.execute(
        "select count(*) as n from public.events where store_id = %s"
        " and event_type = 'reply.confirmed_by_copy'",
        (store_id,),
    ).fetchone()
    per_email = Counter(
        m.message().get("In-Reply-To")
        for m in stack.sink.messages
        if f"({tag} " in m.data.decode(errors="replace")
    )
    return Ledger(
        scenario=name,
        emails=len(job_ids),
        outcomes=dict(sorted(outcomes.items())),
        lost=unsettled(stack, job_ids),
        duplicates=sum(n - 1 for n in per_email.values() if n > 1),
        held_before_copies=held_before_copies,
        in_doubt=sum(1 for r in replies if r["hold_reason"] == "delivery_in_doubt"),
        confirmed_by_copy=int(confirmed["n"]) if confirmed else 0,
        replies_sent=sum(1 for r in replies if r["status"] == "sent"),
        credits_charged=int(credits["charged"]),
        credits_refunded=int(credits["refunded"]),
        settle_seconds=round(settle_seconds, 1),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=200)
    parser.add_argument("--only", default="pg-restart,sigkill,poison")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PGPORT", DEFAULT_PGPORT)))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    url = prepare_database(args.port, DATABASE)
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeClaude(api_key=TEST_API_KEY) as claude,
        FakeShopify(demo_catalogue(), access_token=TEST_ACCESS_TOKEN) as shopify,
    ):
        ca = create_test_ca(Path(tmp))
        with (
            DovecotServer(ca) as dovecot,
            SmtpSink(ca) as sink,
            Database(PgTransport(url)) as db,
            psycopg.connect(url, autocommit=True, row_factory=dict_row) as sql,
        ):
            env = {
                **os.environ,
                "DATABASE_URL": url,
                "WORKER_SECRET": WORKER_SECRET,
                "ANTHROPIC_API_KEY": TEST_API_KEY,
                "ANTHROPIC_BASE_URL": claude.base_url,
                "SHOPIFY_BASE_URL": shopify.base_url,
                "EXTRA_CA_FILE": str(ca.ca_file),
                "REPLY_CAP_PER_CUSTOMER": "1000000",
                "PROCESS_CONCURRENCY": "8",
                "LOG_LEVEL": "ERROR",
            }
            stack = Stack(url, args.port, db, sql, dovecot, sink, claude, shopify, env)
            ledgers = [scenario(stack, name, args.emails, name) for name in args.only.split(",")]
    headers = [
        "scenario",
        "emails",
        "outcomes",
        "lost",
        "dup",
        "held",
        "in doubt",
        "by copy",
        "sent",
        "charged",
        "refunded",
        "settle s",
    ]
    rows = [
        [
            row.scenario,
            row.emails,
            " ".join(f"{k}={v}" for k, v in row.outcomes.items()),
            row.lost,
            row.duplicates,
            row.held_before_copies,
            row.in_doubt,
            row.confirmed_by_copy,
            row.replies_sent,
            row.credits_charged,
            row.credits_refunded,
            row.settle_seconds,
        ]
        for row in ledgers
    ]
    print(render_table(headers, rows))
    if args.json:
        write_json(args.json, {"ledgers": [asdict(row) for row in ledgers]})


if __name__ == "__main__":
    main()
