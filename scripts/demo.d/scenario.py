"""The story the demo plays on its stack: the store, its mailbox, pg_cron's kick, the outcomes.

Creates the demo store with the store CLI (secrets into Vault), puts the seed emails into its
INBOX, sets the Vault secrets pg_cron needs and runs the fetch-emails cron job's own command once,
then waits until every email has settled and reads what the report shows. In the long-running
mode it delivers dropped .eml files and reports new outcomes and pg_cron runs.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

import psycopg
import report
import seed
from psycopg.rows import dict_row
from stack import ROOT, DemoError, Stack, say, step

SETTLE_TIMEOUT = float(os.environ.get("DEMO_TIMEOUT", "300"))  # seconds, for every email to settle
SCHEDULER_TIMEOUT = 30.0  # seconds, for pg_cron's launcher to show up
CRON_RUN_TIMEOUT = 90.0  # seconds; process-queue is scheduled every minute
POLL_INTERVAL = 1.0  # seconds between database polls
# pg_net sends after the caller commits, from its worker; call_worker's requests time out after
# 5 s, so an answer is recorded well within this.
PG_NET_ANSWER_TIMEOUT = 15.0  # seconds
PG_NET_POLL_INTERVAL = 0.1  # seconds
DROP_POLL_INTERVAL = 2.0  # seconds between looks at the drop folder
# The demo store's digest gathers this long after its first item, so the held reply and the dead
# letter of one process run land in one digest; production's default is 60 s.
DIGEST_WAIT_SECONDS = 20
DIGEST_TIMEOUT = 150.0  # seconds for the digest to be sent once every email settled
KICK_INTERVAL = 10.0  # seconds between process-queue kicks while the digest is due

_DIGESTS_SQL = """
select d.job_id, d.created_at, d.email_to, d.email_message_id, d.email_sent_at,
       d.webhook_sent_at, d.webhook_error, d.email_error,
       coalesce((select jsonb_agg(jsonb_build_object('kind', n.kind, 'ref', n.ref,
                                                     'detail', n.detail)
                                  order by n.created_at, n.id)
                 from public.notifications n where n.digest_job_id = d.job_id), '[]') as items
from public.notification_digests d
where d.store_id = %s and d.finished_at is not null
order by d.created_at
"""
MAILBOX_TIMEOUT = 60.0  # seconds, for the mailbox_record jobs to file what the emails left

_ROWS_SQL = """
select m.id, m.conversation_id, m.message_id, m.imap_uid, m.from_name, m.from_address, m.subject,
       m.skip_reason, q.status as job_status, q.result, q.last_error,
       q.attempt_count, r.status as reply_status, r.to_address,
       r.body_text as reply_body, r.hold_reason, r.language, r.intent, r.model,
       r.smtp_message_id, r.error as reply_error,
       (select e.detail -> 'knowledge' from public.events e
        where e.job_id = q.id and e.event_type = 'process.context'
        order by e.id desc limit 1) as knowledge_given,
       exists (select 1 from public.credit_waits w where w.job_id = q.id) as waiting_for_credits
from public.messages m
left join public.job_queue q
  on q.job_type = 'process_email' and q.payload ->> 'message_id' = m.id::text
left join public.replies r on r.message_id = m.id
where m.store_id = %s
order by m.imap_uid nulls last, m.received_at
"""

_TIMING_SQL = """
select count(*) as jobs, avg(d.ms) as avg_ms, max(d.ms) as max_ms,
       percentile_cont(0.95) within group (order by d.ms) as p95_ms
from (select extract(epoch from q.completed_at - q.started_at) * 1000 as ms
      from public.job_queue q
      where q.store_id = %s and q.status = 'completed') d
"""

_CRON_RUNS_SQL = """
select d.runid, j.jobname, d.status, d.return_message, d.start_time
from cron.job_run_details d join cron.job j using (jobid)
where d.runid > %s and d.status in ('succeeded', 'failed')
order by d.runid
"""


class Scenario:
    """The demo store's story, played against a started Stack."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.db: psycopg.Connection[dict[str, Any]] | None = None
        self.store_id = ""
        self.seeds = seed.seed_emails()
        self.drop_dir = stack.workdir / "drop"
        self.settle_seconds = 0.0
        self.last_cron_run = 0
        self.kick_request_id = 0
        self.scheduled_answers: list[int] = []
        self.console_logins: list[tuple[str, str, str]] = []  # (who, email, password)

    def connect(self) -> psycopg.Connection[dict[str, Any]]:
        # Diagnostics run after the clean-up closed the connection: open a new one then.
        if self.db is None or self.db.closed:
            self.db = psycopg.connect(
                self.stack.database_url, autocommit=True, row_factory=dict_row
            )
            self.stack.exits.callback(self.db.close)
        return self.db

    # -- the store and its mailbox -------------------------------------------------------------

    def store_settings(self) -> dict[str, Any]:
        dovecot, sink = self.stack.dovecot, self.stack.sink
        assert dovecot is not None and sink is not None
        return {
            "name": seed.STORE_NAME,
            "support_email": seed.STORE_EMAIL,
            "imap_host": "127.0.0.1",
            "imap_port": dovecot.imaps_port,
            "imap_tls": "ssl",
            "imap_user": seed.STORE_EMAIL,
            "smtp_host": "127.0.0.1",
            "smtp_port": sink.port,
            "smtp_tls": "starttls",
            "smtp_user": seed.STORE_EMAIL,
            "shopify_domain": self.stack.shop_domain,
            "credits": seed.STORE_CREDITS,
            "reply_signature": seed.STORE_SIGNATURE,
        }

    def create_store(self) -> None:
        step("creating the demo store (secrets go into Vault)")
        self.store_id = self.stores_cli_add(self.store_settings())
        say(
            f"    store {self.store_id}: {seed.STORE_NAME} <{seed.STORE_EMAIL}>, "
            f"{seed.STORE_CREDITS} credits"
        )
        self.run_cli(["-m", "worker", "stores", "check", self.store_id], "stores check")
        step("filling the store's knowledge base (shipping, returns, payment, hours, FAQ)")
        self.run_cli(["-m", "worker", "stores", "knowledge", "import", self.store_id,
                      str(seed.KNOWLEDGE_FILE)], "stores knowledge import")
        say(f"    python -m worker stores knowledge import {self.store_id} "
            f"{seed.KNOWLEDGE_FILE.relative_to(ROOT)}")

    def create_console_people(self) -> None:
        """A store owner and an operator, made with the documented CLI (Auth admin API)."""
        step("creating the console's people: a store owner and an operator")
        people = (
            ("store owner", seed.CONSOLE_OWNER_EMAIL, []),
            ("operator", seed.CONSOLE_OPERATOR_EMAIL, ["--operator"]),
        )
        for who, address, flags in people:
            password = secrets.token_urlsafe(12)
            self.run_cli(["-m", "worker", "users", "add", "--email", address, *flags],
                         f"users add ({who})", extra_env={"CONSOLE_USER_PASSWORD": password})
            self.console_logins.append((who, address, password))
        self.run_cli(["-m", "worker", "stores", "members", "add", self.store_id,
                      "--email", seed.CONSOLE_OWNER_EMAIL, "--role", "owner"], "members add")
        say(f"    console: {self.stack.console_url}")
        for who, address, password in self.console_logins:
            say(f"    {who}: {address} / {password}")

    def cli_env(self) -> dict[str, str]:
        env = {**self.stack.worker_env(), "STORE_IMAP_PASSWORD": self.stack.mail_password}
        env["STORE_SMTP_PASSWORD"] = self.stack.mail_password
        env["STORE_SHOPIFY_TOKEN"] = self.stack.shop_token
        return env

    def _python(
        self, args: list[str], extra_env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - the venv's python, fixed arguments
            [sys.executable, *args],
            cwd=ROOT,
            env={**self.cli_env(), **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def run_cli(
        self, args: list[str], what: str, extra_env: Mapping[str, str] | None = None
    ) -> str:
        result = self._python(args, extra_env)
        for line in result.stdout.rstrip().splitlines():
            say(f"    {line}")
        if result.returncode != 0:
            raise DemoError(f"{what} failed (exit {result.returncode}):\n{result.stderr.strip()}")
        return result.stdout

    def stores_cli_add(self, store: Mapping[str, Any]) -> str:
        args = ["-m", "worker", "stores", "add"]
        for key, value in store.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        result = self._python(args)
        if result.returncode != 0:
            raise DemoError(f"stores add failed (exit {result.returncode}):\n{result.stderr}")
        say(f"    python -m worker stores add {shlex.join(args[4:])}")
        return result.stdout.strip().splitlines()[-1]

    def configure_notifications(self) -> None:
        """Digests to the store's people (its owner), and to the webhook, with the stores CLI."""
        assert self.stack.webhook is not None
        step("telling the store's people: notification digests by email and webhook")
        self.run_cli(
            ["-m", "worker", "stores", "notify", self.store_id,
             "--wait-seconds", str(DIGEST_WAIT_SECONDS), "--webhook"],
            "stores notify",
            extra_env={"STORE_NOTIFY_WEBHOOK_URL": self.stack.webhook.url},
        )

    def fill_mailbox(self) -> None:
        assert self.stack.dovecot is not None
        step(f"putting {len(self.seeds)} customer emails into {seed.STORE_EMAIL}'s INBOX")
        self.stack.dovecot.deliver(seed.STORE_EMAIL, [s.raw for s in self.seeds])
        for s in self.seeds:
            parsed = email.message_from_bytes(s.raw, policy=email.policy.default)
            say(f"    [{s.language}] {parsed['From']}: {parsed['Subject']}")

    # -- pg_cron through pg_net ----------------------------------------------------------------

    def set_vault_secrets(self) -> None:
        step("setting the Vault secrets worker_url and worker_secret for pg_cron")
        db = self.connect()
        for name, value in (
            ("worker_url", f"http://127.0.0.1:{self.stack.worker_port}"),
            ("worker_secret", self.stack.worker_secret),
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
        last = db.execute(
            "select coalesce(max(runid), 0) as runid from cron.job_run_details"
        ).fetchone()
        self.last_cron_run = int(last["runid"]) if last else 0

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
        runs = self.connect().execute(_CRON_RUNS_SQL, (self.last_cron_run,)).fetchall()
        for run in runs:
            self.last_cron_run = max(self.last_cron_run, int(run["runid"]))
        return runs

    def wait_for_pg_net(self) -> None:
        """Until pg_net's worker has sent every committed request (it answers each in turn)."""
        deadline = time.monotonic() + PG_NET_ANSWER_TIMEOUT
        db = self.connect()
        while db.execute("select exists (select from net.http_request_queue)").fetchone() != {
            "exists": False
        }:
            if time.monotonic() > deadline:
                raise DemoError(f"pg_net sent nothing in {PG_NET_ANSWER_TIMEOUT:.0f} s")
            time.sleep(PG_NET_POLL_INTERVAL)

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
        self.wait_for_pg_net()
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
            raise DemoError("no fetch-emails cron job: was migration 20261129001200_cron applied?")
        command = str(row["command"])
        what = "the first fetch" if first else "a fetch"
        step(f"kicking {what} with the fetch-emails cron job's own command: {command}")
        result = db.execute(command).fetchone()
        request_id = next(iter(result.values())) if result else None
        self.kick_request_id = max(self.kick_request_id, int(request_id or 0))
        self.wait_for_pg_net()
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

    def kick_process(self) -> None:
        """Run the process-queue cron job's own command now (a digest that just became due)."""
        db = self.connect()
        row = db.execute("select command from cron.job where jobname = 'process-queue'").fetchone()
        if row is None:
            raise DemoError("no process-queue cron job: was migration 20261129001200_cron applied?")
        db.execute(str(row["command"]))
        self.wait_for_pg_net()

    # -- waiting for the outcomes --------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """Every email of the demo store with its job and reply, in mailbox order."""
        return self.connect().execute(_ROWS_SQL, (self.store_id,)).fetchall()

    def wait_until_settled(self) -> list[dict[str, Any]]:
        step(f"waiting for every email to reach an end state (up to {SETTLE_TIMEOUT:.0f} s)")
        deadline = time.monotonic() + SETTLE_TIMEOUT
        started = time.monotonic()
        last = ""
        while True:
            self.stack.check_worker_alive()
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

    def wait_for_digest(self) -> None:
        """Until the store's notification digest went out (the held reply and the dead letter)."""
        step(
            f"waiting for the store's notification digest (it gathers {DIGEST_WAIT_SECONDS} s "
            f"after the first item; up to {DIGEST_TIMEOUT:.0f} s)"
        )
        db = self.connect()
        deadline = time.monotonic() + DIGEST_TIMEOUT
        kicked = 0.0
        while True:
            self.stack.check_worker_alive()
            if db.execute(_DIGESTS_SQL, (self.store_id,)).fetchone() is not None:
                return
            due = db.execute(
                "select count(*) filter (where next_retry_at <= now()) as due, count(*) as n"
                " from public.job_queue where store_id = %s and job_type = 'notify'"
                " and status in ('pending', 'processing')",
                (self.store_id,),
            ).fetchone()
            if not due or not due["n"]:
                raise DemoError("no notification digest was scheduled for the demo store")
            if due["due"] and time.monotonic() - kicked > KICK_INTERVAL:
                # Due now: the next scheduled process-queue run is up to a minute away.
                say("    the digest is due: kicking process-queue with its cron job's command")
                self.kick_process()
                kicked = time.monotonic()
            if time.monotonic() > deadline:
                raise DemoError(f"the notification digest was not sent in {DIGEST_TIMEOUT:.0f} s")
            time.sleep(POLL_INTERVAL)

    def digests(self) -> list[dict[str, Any]]:
        """The store's sent digests with their items and the subject the sink received."""
        assert self.stack.sink is not None
        subjects = {}
        for received in self.stack.sink.messages:
            message = received.message()
            subjects[str(message["Message-ID"] or "").strip()] = str(message["Subject"] or "")
        rows = self.connect().execute(_DIGESTS_SQL, (self.store_id,)).fetchall()
        return [{**r, "subject": subjects.get(str(r["email_message_id"] or ""))} for r in rows]

    # -- what the report shows -----------------------------------------------------------------

    def sent_bodies(self) -> dict[str, str]:
        """Message-ID -> text body of every message the SMTP sink accepted."""
        assert self.stack.sink is not None
        bodies = {}
        for received in self.stack.sink.messages:
            message = received.message()
            part = message.get_body(preferencelist=("plain",))
            text = part.get_content() if part is not None else ""
            bodies[str(message["Message-ID"] or "").strip()] = str(text)
        return bodies

    def responder(self) -> str:
        if self.stack.anthropic_key:
            return "claude"
        return "offline responder (no ANTHROPIC_API_KEY)"

    def dlq_output(self) -> list[str]:
        """What the documented DLQ tool lists for the demo store."""
        result = self._python(
            [str(ROOT / "scripts" / "requeue.py"), "list", "--store", self.store_id]
        )
        return (result.stdout + result.stderr).rstrip().splitlines()

    def mailbox_record(self) -> dict[str, int]:
        """What the store's mailbox shows once its mailbox_record jobs ran (decision 0019)."""
        step(
            "waiting for the replies to be filed in the store's mailbox "
            f"(up to {MAILBOX_TIMEOUT:.0f} s)"
        )
        deadline = time.monotonic() + MAILBOX_TIMEOUT
        while True:
            row = (
                self.connect()
                .execute(
                    "select count(*) filter (where status in ('pending', 'processing')) as open,"
                    " count(*) filter (where status = 'completed') as done"
                    " from public.job_queue where job_type = 'mailbox_record' and store_id = %s",
                    (self.store_id,),
                )
                .fetchone()
            )
            waiting = int(row["open"]) if row else 0
            if waiting == 0 or time.monotonic() > deadline:
                break
            time.sleep(POLL_INTERVAL)
        assert self.stack.dovecot is not None
        dovecot = self.stack.dovecot
        inbox = dovecot.list_folder(seed.STORE_EMAIL, "INBOX")
        return {
            "sent": len(dovecot.list_folder(seed.STORE_EMAIL, "Sent")),
            "drafts": len(dovecot.list_folder(seed.STORE_EMAIL, "Drafts")),
            "answered": sum(1 for m in inbox if "\\Answered" in m.flags),
            "jobs_done": int(row["done"]) if row else 0,
            "jobs_waiting": waiting,
        }

    def report_inputs(self, rows: list[dict[str, Any]]) -> report.ReportInputs:
        """Read everything the report shows, once every email has settled."""
        db = self.connect()
        db.execute("select public.aggregate_queue_metrics()")
        metrics = db.execute(
            "select * from public.queue_metrics"
            " where window_start = (select max(window_start) from public.queue_metrics)"
            " order by job_type"
        ).fetchall()
        stats_row = db.execute("select public.queue_stats() as stats").fetchone()
        store = db.execute(
            "select credits from public.stores where id = %s", (self.store_id,)
        ).fetchone()
        dead = db.execute(
            "select count(*) as n from public.job_queue where status = 'dead_letter'"
        ).fetchone()
        keys = {}
        for s in self.seeds:
            parsed = email.message_from_bytes(s.raw, policy=email.policy.default)
            keys[str(parsed["Message-ID"]).strip()] = s.key
        return report.ReportInputs(
            store_name=seed.STORE_NAME,
            store_email=seed.STORE_EMAIL,
            responder=self.responder(),
            rows=rows,
            keys=keys,
            sent_bodies=self.sent_bodies(),
            credits_start=seed.STORE_CREDITS,
            credits_left=int(store["credits"]) if store else -1,
            dead_letter_jobs=int(dead["n"]) if dead else 0,
            settle_seconds=self.settle_seconds,
            timing=db.execute(_TIMING_SQL, (self.store_id,)).fetchone(),
            queue_metrics=metrics,
            queue_stats=stats_row["stats"] if stats_row else {},
            dlq_output=self.dlq_output(),
            database_url=self.stack.database_url,
            console_url=self.stack.console_url,
            console_logins=tuple(self.console_logins),
            digests=self.digests(),
            webhook_posts=tuple(self.stack.webhook.posts) if self.stack.webhook else (),
            mailbox=self.mailbox_record(),
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
        say(f"Worker log: {self.stack.gunicorn_log}   Database: {self.stack.database_url}")
        say("Press Ctrl-C to stop everything the demo started.")
        while True:
            self.stack.check_worker_alive()
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
            time.sleep(DROP_POLL_INTERVAL)

    def deliver_dropped(self) -> None:
        assert self.stack.dovecot is not None
        # A file still being written (younger than a second) waits for the next look.
        settled = time.time() - 1.0
        dropped = sorted(
            p for p in self.drop_dir.glob("*.eml") if p.is_file() and p.stat().st_mtime < settled
        )
        if not dropped:
            return
        for path in dropped:
            raw = path.read_bytes()
            self.stack.dovecot.deliver(seed.STORE_EMAIL, [raw])
            path.rename(path.with_suffix(".delivered"))
            say(f"==> delivered {path.name} to the INBOX")
        try:
            self.kick_fetch()
        except DemoError as exc:
            say(f"    fetch kick failed: {exc}; pg_cron's next fetch will pick the mail up")

    # -- failure diagnostics -------------------------------------------------------------------

    def diagnostics(self) -> str:
        parts = self.stack.diagnostics()
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
