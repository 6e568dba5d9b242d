"""The local demo after set-up (started by scripts/demo, which prepared Postgres and the venv).

Starts Dovecot and an SMTP sink sharing a throwaway CA, the fake Shopify with the demo catalogue
(unless a real shop is configured), and the worker under gunicorn; creates the demo store and its
mailbox; sets the Vault secrets and kicks pg_cron's own fetch command through pg_net; waits until
every email has settled and prints the report. Then keeps running (pg_cron keeps polling) until
Ctrl-C, or exits at once with --once (or CI=true). Everything started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import email
import email.policy
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]

import psycopg  # noqa: E402
import report  # noqa: E402
import seed  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402

from worker.devstack.dovecot import DovecotServer  # noqa: E402
from worker.devstack.fake_shopify import FakeShopify, demo_catalogue  # noqa: E402
from worker.devstack.smtp_sink import SmtpSink  # noqa: E402
from worker.devstack.tls import create_test_ca  # noqa: E402

VENV_BIN = Path(sys.executable).parent
SETTLE_TIMEOUT = float(os.environ.get("DEMO_TIMEOUT", "300"))  # seconds, for every email to settle
START_TIMEOUT = 60.0  # seconds, for gunicorn to answer /readyz
STOP_TIMEOUT = 45.0  # seconds; above gunicorn's graceful_timeout
SCHEDULER_TIMEOUT = 30.0  # seconds, for pg_cron's launcher to show up
CRON_RUN_TIMEOUT = 90.0  # seconds; process-queue is scheduled every minute
POLL_INTERVAL = 1.0  # seconds between database polls
LOG_TAIL_CHARS = 4000
PR_SET_PDEATHSIG = 1


class DemoError(Exception):
    """The demo cannot go on; the message says why and what to look at."""


def say(text: str = "") -> None:
    # A closed terminal or pipe must not stop the clean-up that follows.
    with contextlib.suppress(OSError):
        print(text, flush=True)


def step(text: str) -> None:
    say(f"==> {text}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # If the demo is killed outright, gunicorn must not outlive it.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


class Demo:
    """Owns every process and server the demo starts, and the database connection."""

    def __init__(self, database_url: str, workdir: Path, *, once: bool) -> None:
        self.database_url = database_url
        self.workdir = workdir
        self.once = once
        self.stack = contextlib.ExitStack()
        self.db: psycopg.Connection[dict[str, Any]] | None = None
        self.dovecot: DovecotServer | None = None
        self.sink: SmtpSink | None = None
        self.gunicorn: subprocess.Popen[bytes] | None = None
        self.gunicorn_log = workdir / "gunicorn.log"
        self.worker_port = int(os.environ.get("DEMO_WORKER_PORT") or free_port())
        self.worker_secret = secrets.token_urlsafe(32)
        self.mail_password = secrets.token_urlsafe(16)
        self.shop_token = secrets.token_urlsafe(24)
        self.shopify_base_url: str | None = None
        self.shop_domain = os.environ.get("DEMO_SHOPIFY_DOMAIN") or seed.STORE_SHOP_DOMAIN
        self.real_shop = bool(os.environ.get("DEMO_SHOPIFY_DOMAIN"))
        self.anthropic_key = os.environ.get("ANTHROPIC_API_KEY") or None
        self.store_id = ""
        self.seeds = seed.seed_emails()
        self.drop_dir = workdir / "drop"
        self.settle_seconds = 0.0
        self.last_cron_run = 0
        self.kick_request_id = 0
        self.scheduled_answers: list[int] = []

    # -- start-up ------------------------------------------------------------------------------

    def connect(self) -> psycopg.Connection[dict[str, Any]]:
        # Diagnostics run after the clean-up closed the connection: open a new one then.
        if self.db is None or self.db.closed:
            self.db = psycopg.connect(self.database_url, autocommit=True, row_factory=dict_row)
            self.stack.callback(self.db.close)
        return self.db

    def start_mail(self) -> None:
        step("starting Dovecot (IMAP) and an SMTP sink with a throwaway CA")
        ca = create_test_ca(self.workdir / "ca")
        (self.workdir / "dovecot").mkdir()
        dovecot = DovecotServer(ca, directory=self.workdir / "dovecot")
        dovecot.start()
        self.stack.callback(dovecot.stop)
        self.dovecot = dovecot
        dovecot.add_user(seed.STORE_EMAIL, self.mail_password)
        sink = SmtpSink(ca, username=seed.STORE_EMAIL, password=self.mail_password)
        sink.start()
        self.stack.callback(sink.stop)
        # A customer address the receiving server refuses for good: its reply must end in the
        # dead-letter queue with the server's reason, and its credit must be given back.
        sink.refuse(seed.REFUSED_RECIPIENT, 550)
        self.sink = sink
        say(f"    IMAP  imaps://127.0.0.1:{dovecot.imaps_port}  user {seed.STORE_EMAIL}")
        say(f"    SMTP  127.0.0.1:{sink.port} (STARTTLS)")
        say(f"          refuses {seed.REFUSED_RECIPIENT} with 550 (its reply goes to the DLQ)")
        say(f"    CA    {ca.ca_file}")

    def start_shopify(self) -> None:
        if self.real_shop:
            step(f"using the real shop {self.shop_domain} (DEMO_SHOPIFY_DOMAIN)")
            token = os.environ.get("DEMO_SHOPIFY_TOKEN")
            if not token:
                raise DemoError("DEMO_SHOPIFY_DOMAIN is set but DEMO_SHOPIFY_TOKEN is not")
            self.shop_token = token
            return
        step("starting the fake Shopify with the demo catalogue (orders #1001-#1004)")
        fake = FakeShopify(demo_catalogue(), access_token=self.shop_token)
        fake.start()
        self.stack.callback(fake.stop)
        self.shopify_base_url = fake.base_url
        say(f"    {fake.base_url}  shop {self.shop_domain}")

    def worker_env(self) -> dict[str, str]:
        assert self.dovecot is not None
        env = {
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "DATABASE_URL": self.database_url,
            "WORKER_SECRET": self.worker_secret,
            "EXTRA_CA_FILE": str(self.dovecot.ca.ca_file),
            "PORT": str(self.worker_port),
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
        }
        if self.shopify_base_url:
            env["SHOPIFY_BASE_URL"] = self.shopify_base_url
        if self.anthropic_key:
            env["ANTHROPIC_API_KEY"] = self.anthropic_key
            for name in ("ANTHROPIC_BASE_URL", "CLAUDE_MODEL"):
                if os.environ.get(name):
                    env[name] = os.environ[name]
        return env

    def start_worker(self) -> None:
        step("starting the worker under gunicorn, as the Dockerfile runs it")
        # The image's CMD; --bind keeps the demo on loopback (the image binds 0.0.0.0:$PORT).
        argv = [
            str(VENV_BIN / "gunicorn"),
            "-c",
            "worker/gunicorn_conf.py",
            "--bind",
            f"127.0.0.1:{self.worker_port}",
            "worker.app:create_app()",
        ]
        with self.gunicorn_log.open("wb") as log:
            self.gunicorn = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                argv,
                cwd=ROOT,
                env=self.worker_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.stack.callback(self.stop_worker)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self.check_worker_alive()
            status = self.http_status("/readyz")
            if status == 200:
                break
            if time.monotonic() > deadline:
                raise DemoError(f"the worker did not become ready in {START_TIMEOUT:.0f} s")
            time.sleep(0.2)
        say(f"    http://127.0.0.1:{self.worker_port}  (gunicorn log: {self.gunicorn_log})")
        if self.anthropic_key:
            say("    responder: Claude (ANTHROPIC_API_KEY is set)")
        else:
            say("    responder: offline responder (no ANTHROPIC_API_KEY) - rule-based, pt and en")

    def http_status(self, path: str) -> int | None:
        url = f"http://127.0.0.1:{self.worker_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def check_worker_alive(self) -> None:
        if self.gunicorn is not None and self.gunicorn.poll() is not None:
            raise DemoError(f"gunicorn exited with status {self.gunicorn.returncode}")

    def stop_worker(self) -> None:
        process, self.gunicorn = self.gunicorn, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    # -- the store and its mailbox -------------------------------------------------------------

    def store_settings(self) -> dict[str, Any]:
        assert self.dovecot is not None and self.sink is not None
        return {
            "name": seed.STORE_NAME,
            "support_email": seed.STORE_EMAIL,
            "imap_host": "127.0.0.1",
            "imap_port": self.dovecot.imaps_port,
            "imap_tls": "ssl",
            "imap_user": seed.STORE_EMAIL,
            "smtp_host": "127.0.0.1",
            "smtp_port": self.sink.port,
            "smtp_tls": "starttls",
            "smtp_user": seed.STORE_EMAIL,
            "shopify_domain": self.shop_domain,
            "credits": seed.STORE_CREDITS,
            "reply_signature": seed.STORE_SIGNATURE,
        }

    def create_store(self) -> None:
        step("creating the demo store (secrets go into Vault)")
        store = self.store_settings()
        if (ROOT / "worker" / "stores.py").exists():
            self.store_id = self.stores_cli_add(store)
        else:
            row = (
                self.connect()
                .execute(
                    "select public.admin_create_store(%s::jsonb, %s::jsonb) as id",
                    (
                        report.to_json(store),
                        report.to_json(
                            {
                                "imap_password": self.mail_password,
                                "smtp_password": self.mail_password,
                                "shopify_token": self.shop_token,
                            }
                        ),
                    ),
                )
                .fetchone()
            )
            assert row is not None
            self.store_id = str(row["id"])
        say(
            f"    store {self.store_id}: {seed.STORE_NAME} <{seed.STORE_EMAIL}>, "
            f"{seed.STORE_CREDITS} credits"
        )
        if (ROOT / "worker" / "stores.py").exists():
            self.run_cli(["-m", "worker", "stores", "check", self.store_id], "stores check")

    def cli_env(self) -> dict[str, str]:
        env = {**self.worker_env(), "STORE_IMAP_PASSWORD": self.mail_password}
        env["STORE_SMTP_PASSWORD"] = self.mail_password
        env["STORE_SHOPIFY_TOKEN"] = self.shop_token
        return env

    def run_cli(self, args: list[str], what: str) -> str:
        result = subprocess.run(  # noqa: S603 - the venv's python, fixed arguments
            [sys.executable, *args],
            cwd=ROOT,
            env=self.cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        for line in result.stdout.rstrip().splitlines():
            say(f"    {line}")
        if result.returncode != 0:
            raise DemoError(f"{what} failed (exit {result.returncode}):\n{result.stderr.strip()}")
        return result.stdout

    def stores_cli_add(self, store: Mapping[str, Any]) -> str:
        args = ["-m", "worker", "stores", "add"]
        for key, value in store.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        result = subprocess.run(  # noqa: S603 - the venv's python, fixed arguments
            [sys.executable, *args],
            cwd=ROOT,
            env=self.cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise DemoError(f"stores add failed (exit {result.returncode}):\n{result.stderr}")
        say(f"    python -m worker stores add {shlex.join(args[4:])}")
        return result.stdout.strip().splitlines()[-1]

    def fill_mailbox(self) -> None:
        assert self.dovecot is not None
        step(f"putting {len(self.seeds)} customer emails into {seed.STORE_EMAIL}'s INBOX")
        self.dovecot.deliver(seed.STORE_EMAIL, [s.raw for s in self.seeds])
        for s in self.seeds:
            parsed = email.message_from_bytes(s.raw, policy=email.policy.default)
            say(f"    [{s.language}] {parsed['From']}: {parsed['Subject']}")

    # -- pg_cron through pg_net ----------------------------------------------------------------

    def set_vault_secrets(self) -> None:
        step("setting the Vault secrets worker_url and worker_secret for pg_cron")
        db = self.connect()
        for name, value in (
            ("worker_url", f"http://127.0.0.1:{self.worker_port}"),
            ("worker_secret", self.worker_secret),
        ):
            row = db.execute("select id from vault.secrets where name = %s", (name,)).fetchone()
            if row:
                db.execute("select vault.update_secret(%s, %s)", (row["id"], value))
            else:
                db.execute("select vault.create_secret(%s, %s)", (value, name))
        jobs = db.execute("select jobname, schedule from cron.job order by jobid").fetchall()
        for job in jobs:
            say(f"    cron job {job['jobname']:<24} {job['schedule']}")
        # A scheduled run that started while the demo was still booting found no secrets and
        # failed, as it should; only runs from now on show the schedule driving the worker.
        row = db.execute("select coalesce(max(runid), 0) as runid from cron.job_run_details")
        self.last_cron_run = int(row.fetchone()["runid"])

    def wait_for_scheduler(self) -> None:
        """pg_cron's launcher must be running, or nothing after the first kick would happen."""
        deadline = time.monotonic() + SCHEDULER_TIMEOUT
        while True:
            row = (
                self.connect()
                .execute(
                    "select count(*) as n from pg_stat_activity"
                    " where backend_type = 'pg_cron launcher'"
                )
                .fetchone()
            )
            if row and row["n"]:
                return
            if time.monotonic() > deadline:
                raise DemoError(
                    "pg_cron's scheduler is not running (no 'pg_cron launcher' backend); "
                    "restart the cluster: pg_ctlcluster 15 port<DEMO_PGPORT> restart"
                )
            time.sleep(0.5)

    def cron_runs(self) -> list[dict[str, Any]]:
        """pg_cron runs not shown yet, oldest first, with the pg_net answer each one got."""
        runs = (
            self.connect()
            .execute(
                """
            select d.runid, j.jobname, d.status, d.return_message, d.start_time
            from cron.job_run_details d join cron.job j using (jobid)
            where d.runid > %s and d.status in ('succeeded', 'failed')
            order by d.runid
            """,
                (self.last_cron_run,),
            )
            .fetchall()
        )
        for run in runs:
            self.last_cron_run = max(self.last_cron_run, int(run["runid"]))
        return runs

    def wait_for_scheduled_run(self) -> None:
        """In --once mode: prove the schedule itself drives the worker before exiting."""
        step(
            "waiting for pg_cron's next scheduled process-queue run (every minute, "
            f"up to {CRON_RUN_TIMEOUT:.0f} s)"
        )
        deadline = time.monotonic() + CRON_RUN_TIMEOUT
        while True:
            runs = self.cron_runs()
            for run in runs:
                say(report.cron_run_line(run))
            if any(r["jobname"] == "process-queue" for r in runs):
                break
            if time.monotonic() > deadline:
                raise DemoError(f"pg_cron ran no process-queue job in {CRON_RUN_TIMEOUT:.0f} s")
            time.sleep(POLL_INTERVAL)
        answers = (
            self.connect()
            .execute(
                "select id, status_code, content, error_msg from net._http_response"
                " where id > %s order by id",
                (self.kick_request_id,),
            )
            .fetchall()
        )
        for answer in answers:
            say(
                f"    pg_net request {answer['id']} -> HTTP {answer['status_code']} "
                f"{(answer['content'] or answer['error_msg'] or '').strip()}"
            )
        self.scheduled_answers = [a["status_code"] for a in answers]

    def kick_fetch(self, first: bool = False) -> None:
        """Run the fetch-emails cron job's own command now instead of waiting 5 minutes."""
        db = self.connect()
        row = db.execute("select command from cron.job where jobname = 'fetch-emails'").fetchone()
        if row is None:
            raise DemoError("no fetch-emails cron job: was migration 20261129000400_cron applied?")
        command = str(row["command"])
        what = "the first fetch" if first else "a fetch"
        step(f"kicking {what} with the fetch-emails cron job's own command: {command}")
        result = db.execute(command).fetchone()
        request_id = next(iter(result.values())) if result else None
        self.kick_request_id = max(self.kick_request_id, int(request_id or 0))
        response = db.execute(
            "select status_code, content, error_msg from net._http_response where id = %s",
            (request_id,),
        ).fetchone()
        if response is None:
            raise DemoError(f"pg_net recorded no response for request {request_id}")
        if response["status_code"] not in (202, 409):
            raise DemoError(
                f"the worker answered pg_net with {response['status_code']}: "
                f"{response['content'] or response['error_msg']}"
            )
        say(
            f"    pg_net request {request_id} -> HTTP {response['status_code']} "
            f"{(response['content'] or '').strip()}"
        )

    # -- watching and reporting ----------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        return (
            self.connect()
            .execute(
                """
            select m.id, m.message_id, m.imap_uid, m.from_name, m.from_address, m.subject,
                   m.skip_reason, q.status as job_status, q.result, q.last_error,
                   q.attempt_count, r.status as reply_status, r.to_address,
                   r.body_text as reply_body, r.hold_reason, r.language, r.intent, r.model,
                   r.smtp_message_id, r.error as reply_error
            from public.messages m
            left join public.job_queue q
              on q.job_type = 'process_email' and q.payload ->> 'message_id' = m.id::text
            left join public.replies r on r.message_id = m.id
            where m.store_id = %s
            order by m.imap_uid nulls last, m.received_at
            """,
                (self.store_id,),
            )
            .fetchall()
        )

    def wait_until_settled(self) -> list[dict[str, Any]]:
        step(f"waiting for every email to reach an end state (up to {SETTLE_TIMEOUT:.0f} s)")
        deadline = time.monotonic() + SETTLE_TIMEOUT
        started = time.monotonic()
        last = ""
        while True:
            self.check_worker_alive()
            rows = self.rows()
            settled = sum(1 for r in rows if report.outcome_of(r).final)
            progress = f"{len(rows)}/{len(self.seeds)} fetched, {settled} settled"
            if progress != last:
                say(f"    {time.monotonic() - started:5.1f}s  {progress}")
                last = progress
            if report.all_settled(rows, len(self.seeds)):
                self.settle_seconds = time.monotonic() - started
                return rows
            if time.monotonic() > deadline:
                waiting = [
                    f"  {r['from_address']}: {report.outcome_of(r).detail}"
                    for r in rows
                    if not report.outcome_of(r).final
                ]
                raise DemoError(
                    f"not every email settled in {SETTLE_TIMEOUT:.0f} s ({progress})"
                    + ("\n" + "\n".join(waiting) if waiting else "")
                )
            time.sleep(POLL_INTERVAL)

    def sent_bodies(self) -> dict[str, str]:
        """Message-ID -> text body of every message the SMTP sink accepted."""
        assert self.sink is not None
        bodies = {}
        for received in self.sink.messages:
            message = received.message()
            part = message.get_body(preferencelist=("plain",))
            text = part.get_content() if part is not None else ""
            bodies[str(message["Message-ID"] or "").strip()] = str(text)
        return bodies

    def print_report(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        db = self.connect()
        db.execute("select public.aggregate_queue_metrics()")
        metrics = db.execute(
            "select * from public.queue_metrics"
            " where window_start = (select max(window_start) from public.queue_metrics)"
            " order by job_type"
        ).fetchall()
        stats_row = db.execute("select public.queue_stats() as stats").fetchone()
        stats = stats_row["stats"] if stats_row else {}
        store = db.execute(
            "select credits from public.stores where id = %s", (self.store_id,)
        ).fetchone()
        credits_left = int(store["credits"]) if store else -1
        dead = db.execute(
            "select count(*) as n from public.job_queue where status = 'dead_letter'"
        ).fetchone()
        keys = {}
        for s in self.seeds:
            parsed = email.message_from_bytes(s.raw, policy=email.policy.default)
            keys[str(parsed["Message-ID"]).strip()] = s.key
        responder = "claude" if self.anthropic_key else "offline responder (no ANTHROPIC_API_KEY)"
        data = report.summary(
            rows,
            keys,
            responder=responder,
            credits_start=seed.STORE_CREDITS,
            credits_left=credits_left,
            dead_letter_jobs=int(dead["n"]) if dead else 0,
        )
        say()
        say("=" * 100)
        say(f"DEMO REPORT - store {seed.STORE_NAME} <{seed.STORE_EMAIL}>, responder: {responder}")
        say("=" * 100)
        for line in report.email_lines(rows, self.sent_bodies()):
            say(line)
        say()
        say(f"Outcomes: {report.counts_line(data)}")
        used = seed.STORE_CREDITS - credits_left
        say(
            f"Credits: {credits_left} left of {seed.STORE_CREDITS} ({used} used; a reply that "
            "could not be delivered is refunded)"
        )
        timing = db.execute(
            """
            select count(*) as jobs, avg(d.ms) as avg_ms, max(d.ms) as max_ms,
                   percentile_cont(0.95) within group (order by d.ms) as p95_ms
            from (select extract(epoch from q.completed_at - q.started_at) * 1000 as ms
                  from public.job_queue q
                  where q.store_id = %s and q.status = 'completed') d
            """,
            (self.store_id,),
        ).fetchone()
        say(
            f"Timing: every email settled {self.settle_seconds:.1f} s after the fetch kick"
            " (measured by polling once a second)"
        )
        if timing and timing["jobs"]:
            say(
                f"        {timing['jobs']} completed process_email jobs took "
                f"avg {timing['avg_ms']:.0f} ms, p95 {timing['p95_ms']:.0f} ms, "
                f"max {timing['max_ms']:.0f} ms (claim to completion)"
            )
        data["settle_seconds"] = round(self.settle_seconds, 1)
        say()
        for line in report.metrics_lines(metrics, stats):
            say(line)
        say()
        say("Dead-letter queue (scripts/requeue.py list):")
        self.show_dlq()
        return data

    def show_dlq(self) -> None:
        tool = ROOT / "scripts" / "requeue.py"
        if not tool.exists():
            for job in (
                self.connect()
                .execute(
                    "select id, job_type, attempt_count, last_error from"
                    " public.list_dead_letter_jobs(p_store_id => %s)",
                    (self.store_id,),
                )
                .fetchall()
            ):
                say(
                    f"  {job['id']}  {job['job_type']}  attempts={job['attempt_count']}"
                    f"  {job['last_error']}"
                )
            return
        result = subprocess.run(  # noqa: S603 - the venv's python, fixed arguments
            [sys.executable, str(tool), "list", "--store", self.store_id],
            cwd=ROOT,
            env=self.cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        for line in (result.stdout + result.stderr).rstrip().splitlines():
            say(f"  {line}")
        say(
            f"  (requeue one after fixing its cause: scripts/requeue.py requeue JOB_ID; "
            f"DATABASE_URL={self.database_url})"
        )

    # -- keep running --------------------------------------------------------------------------

    def keep_running(self, reported: set[str]) -> None:
        self.drop_dir.mkdir(exist_ok=True)
        say()
        say("The demo keeps running: pg_cron calls /process-queue every minute and /fetch-emails")
        say("every 5 minutes through pg_net. To send the store a new email, drop an .eml file into")
        say(f"{self.drop_dir} (it is delivered to the INBOX and a fetch is kicked), e.g.:")
        say()
        say(seed.new_mail_example(self.drop_dir))
        say()
        say(f"Worker log: {self.gunicorn_log}   Database: {self.database_url}")
        say("Press Ctrl-C to stop everything the demo started.")
        while True:
            self.check_worker_alive()
            self.deliver_dropped()
            for row in self.rows():
                outcome = report.outcome_of(row)
                if outcome.final and str(row["id"]) not in reported:
                    reported.add(str(row["id"]))
                    say()
                    say("New mail:")
                    for line in report.email_lines([row], self.sent_bodies()):
                        say(line)
            for run in self.cron_runs():
                say(report.cron_run_line(run))
            time.sleep(2)

    def deliver_dropped(self) -> None:
        assert self.dovecot is not None
        # A file still being written (younger than a second) waits for the next look.
        settled = time.time() - 1.0
        dropped = sorted(
            p for p in self.drop_dir.glob("*.eml") if p.is_file() and p.stat().st_mtime < settled
        )
        if not dropped:
            return
        for path in dropped:
            raw = path.read_bytes()
            self.dovecot.deliver(seed.STORE_EMAIL, [raw])
            path.rename(path.with_suffix(".delivered"))
            say(f"==> delivered {path.name} to the INBOX")
        try:
            self.kick_fetch()
        except DemoError as exc:
            say(f"    fetch kick failed: {exc}; pg_cron's next fetch will pick the mail up")

    # -- failure diagnostics -------------------------------------------------------------------

    def diagnostics(self) -> str:
        parts = [f"--- gunicorn log ({self.gunicorn_log})\n{tail(self.gunicorn_log)}"]
        if self.dovecot is not None:
            parts.append(self.dovecot.diagnostics())
        with contextlib.suppress(Exception):
            db = self.connect()
            events = db.execute(
                "select created_at, event_type, detail from public.events"
                " where event_type like any (array['fetch.%%', 'job.dead%%', 'job.retry%%',"
                " 'circuit.%%']) order by id desc limit 10"
            ).fetchall()
            parts.append(
                "--- recent events\n"
                + "\n".join(
                    f"{e['created_at']:%H:%M:%S} {e['event_type']} {e['detail']}" for e in events
                )
            )
            runs = db.execute(
                "select d.start_time, j.jobname, d.status, d.return_message"
                " from cron.job_run_details d join cron.job j using (jobid)"
                " order by d.runid desc limit 5"
            ).fetchall()
            parts.append(
                "--- recent pg_cron runs\n"
                + "\n".join(
                    f"{r['start_time']:%H:%M:%S} {r['jobname']} {r['status']} {r['return_message']}"
                    for r in runs
                )
            )
        return "\n".join(parts)


def stop_cluster() -> None:
    """Stop the demo's Postgres cluster if scripts/demo started it (DEMO_STOP_CLUSTER)."""
    cluster = os.environ.get("DEMO_STOP_CLUSTER")
    if not cluster:
        return
    version, _, name = cluster.partition("/")
    subprocess.run(  # noqa: S603 - fixed argv
        ["pg_ctlcluster", version, name, "stop"],  # noqa: S607 - Debian's tool on PATH
        check=False,
        stdout=subprocess.DEVNULL,
        timeout=120,
    )
    say(f"==> stopped Postgres cluster {cluster} (started by the demo)")


@contextlib.contextmanager
def interrupts_as_keyboard() -> Iterator[None]:
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="exit after the report")
    args = parser.parse_args(argv)
    once = args.once or os.environ.get("CI", "").lower() in ("1", "true", "yes")
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        say("DATABASE_URL is not set: run scripts/demo, which prepares the database")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="support-demo-"))
    workdir.chmod(0o755)  # Dovecot's unprivileged mail processes must reach the Maildirs
    demo = Demo(database_url, workdir, once=once)
    status = 0
    with interrupts_as_keyboard():
        try:
            with demo.stack:
                say(f"Demo working directory (logs): {workdir}")
                demo.start_mail()
                demo.start_shopify()
                demo.start_worker()
                demo.create_store()
                demo.fill_mailbox()
                demo.wait_for_scheduler()
                demo.set_vault_secrets()
                demo.kick_fetch(first=True)
                rows = demo.wait_until_settled()
                data = demo.print_report(rows)
                if once:
                    say()
                    demo.wait_for_scheduled_run()
                    data["scheduled_http_statuses"] = demo.scheduled_answers
                out = os.environ.get("DEMO_REPORT_JSON")
                if out:
                    Path(out).write_text(report.to_json(data))
                if not once:
                    demo.keep_running({str(r["id"]) for r in rows})
        except KeyboardInterrupt:
            say("\n==> stopping (Ctrl-C)")
        except DemoError as exc:
            say(f"\nDEMO FAILED: {exc}\n")
            say(demo.diagnostics())
            status = 1
        except Exception:
            say(f"\nDEMO FAILED unexpectedly:\n{traceback.format_exc()}")
            say(demo.diagnostics())
            status = 1
        finally:
            stop_cluster()
    say(f"==> stopped everything the demo started; logs kept in {workdir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
