"""Emails per hour through one worker container, end to end (issue 6 §3).

One command: `.venv/bin/python bench/pipeline.py --emails 5000 --stores 10`. It prepares its own
database (scripts/local-db --fresh on --pgport), fills a real Dovecot with realistic customer
emails (pt and en, most with an order number), starts the fake Claude and fake Shopify (each in
its own process, with the configured latencies) and a real SMTP sink (STARTTLS + AUTH, its own
process), creates the stores through admin_create_store, runs the worker under gunicorn exactly as
the Dockerfile's CMD does, and drives it through the HTTP triggers (re-triggered every
--trigger-every seconds, as pg_cron would, only faster) until every email has a reply in the sink.

It prints one table: throughput, latency from arrival in the mailbox to the reply reaching the
sink, the worker's CPU per email (utime+stime of the gunicorn processes), database work per email
and the theoretical bound (concurrency / external latency per email). Never part of the test run;
tests/integration/test_bench_pipeline_smoke.py keeps a tiny run of it working.
"""

from __future__ import annotations

from script_path import ROOT  # first: swaps bench/ for the repository root on sys.path

# isort: split

import argparse
import ctypes
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any

import psycopg

from bench.common import migrations_without_pg_cron
from worker import offline, promises
from worker.devstack.dovecot import DovecotServer, free_port
from worker.devstack.tls import TestCA, create_test_ca
from worker.pipeline import steps

WORKER_SECRET = "bench-pipeline-secret-0123456789"  # throwaway, loopback only
ANTHROPIC_KEY = "dummy"
SHOPIFY_TOKEN = "shpat_bench_fake_token"  # throwaway, loopback only
SMTP_USER, SMTP_PASSWORD = "sender@shop.test", "bench-smtp-password"
IMAP_PASSWORD = "bench-imap-password"
START_WAIT = 60.0  # seconds for a child server or gunicorn to answer
POLL_SECONDS = 0.2  # how often the driver looks at the sink's log
LISTEN_BACKLOG = 4096  # connections the fakes queue before accepting
PR_SET_PDEATHSIG = 1  # linux/prctl.h
CLK_TCK = os.sysconf("SC_CLK_TCK")
IN_REPLY_TO = re.compile(rb"^In-Reply-To:[ \t]*(<[^>\r\n]+>)", re.I | re.M)


# --- realistic customer mail (pure) ----------------------------------------------------------

# (language, subject, body); {n} is the order number, {name} the customer's first name.
# Every template classifies as an intent the worker answers on its own (never a hold), which
# `check_sendable` verifies before anything is delivered. Order questions only: a refund or a
# product question without the store's knowledge or catalogue is held for a person (its reply
# would have to promise that the team follows up; decision 0020).
TEMPLATES: tuple[tuple[str, str, str], ...] = (
    (
        "pt",
        "Onde está meu pedido #{n}?",
        "Olá, boa tarde!\n\nFiz o pedido #{n} na semana passada e até agora não recebi o código "
        "de rastreio. Vocês podem me dizer quando chega?\n\nObrigada,\n{name}",
    ),
    (
        "pt",
        "Pedido #{n} atrasado",
        "Oi, tudo bem?\n\nMeu pedido #{n} ainda não chegou e o prazo de entrega já passou. "
        "Podem verificar com a transportadora, por favor?\n\nAtt,\n{name}",
    ),
    (
        "pt",
        "Rastreio do pedido {n}",
        "Olá! Qual é o código de rastreio do pedido {n}? Quero acompanhar a entrega.\n\n{name}",
    ),
    (
        "pt",
        "Status do meu pedido #{n}",
        "Bom dia! Meu pedido #{n} já foi enviado? Gostaria de saber o status.\n\nObrigado,\n"
        "{name}",
    ),
    (
        "en",
        "Where is my order #{n}?",
        "Hi there,\n\nI placed order #{n} last week and haven't had any tracking update since. "
        "Could you tell me when it will be delivered?\n\nThanks,\n{name}",
    ),
    (
        "en",
        "Order #{n} delayed",
        "Hello,\n\nMy order #{n} still hasn't arrived and the estimated date was three days "
        "ago. Can you check what is going on?\n\nBest,\n{name}",
    ),
    (
        "en",
        "Tracking number for order {n}",
        "Hi,\n\nCould you send me the tracking number for order {n}? I'd like to follow the "
        "delivery.\n\nKind regards,\n{name}",
    ),
    (
        "en",
        "Has order #{n} shipped?",
        "Hello! Has my order #{n} shipped yet? Please let me know its status.\n\n{name}",
    ),
)
NAMES = {
    "pt": ("Ana", "Bruno", "Camila", "Diego", "Fernanda", "Gustavo", "Juliana", "Rafael"),
    "en": ("Alice", "Ben", "Chloe", "Daniel", "Emma", "Frank", "Grace", "Henry"),
}
FIRST_ORDER = 10_001


@dataclass(frozen=True)
class BenchEmail:
    """One customer email of the run and where it goes."""

    index: int
    store: int
    message_id: str
    customer: str
    order_number: str
    language: str
    subject: str
    body: str


def customer_emails(count: int, stores: int, run_tag: str) -> list[BenchEmail]:
    """`count` distinct customers' emails spread round-robin over `stores` (deterministic)."""
    emails = []
    for i in range(count):
        language, subject, body = TEMPLATES[i % len(TEMPLATES)]
        name = NAMES[language][(i // len(TEMPLATES)) % len(NAMES[language])]
        number = str(FIRST_ORDER + i)
        # One customer per email: the reply cap (3 per customer a day) must not hold any back.
        domain = "exemplo.com.br" if language == "pt" else "example.com"
        customer = f"{name.lower()}.{i}@{domain}"
        emails.append(
            BenchEmail(
                index=i,
                store=i % stores,
                message_id=f"<bench-{run_tag}-{i}@{domain}>",
                customer=customer,
                order_number=number,
                language=language,
                subject=subject.format(n=number, name=name),
                body=body.format(n=number, name=name),
            )
        )
    return emails


def store_address(store: int) -> str:
    return f"support@store{store}.test"


def to_mime(email: BenchEmail, sent_at: float) -> bytes:
    """The email as a customer's mail client would send it."""
    msg = EmailMessage()
    msg["From"] = email.customer
    msg["To"] = store_address(email.store)
    msg["Subject"] = email.subject
    msg["Date"] = formatdate(sent_at, localtime=False)
    msg["Message-ID"] = email.message_id
    msg["MIME-Version"] = "1.0"
    msg.set_content(email.body)
    return msg.as_bytes()


def check_sendable(emails: list[BenchEmail]) -> None:
    """Fail fast if a template would be held for a person: the run waits for every reply."""
    seen: set[tuple[str, str]] = set()
    for email in emails:
        key = (email.language, email.subject.split("#")[0][:12])
        if key in seen:
            continue
        seen.add(key)
        c = offline.classify_text(email.subject, email.body)
        if c.is_spam or c.needs_human or c.intent in steps.HUMAN_INTENTS or c.confidence < 0.6:
            raise SystemExit(f"template would not be answered automatically: {email.subject!r} {c}")
        # Without any order found the reply must still go out: a promise of the team's
        # follow-up would hold it for a person.
        body = offline.compose_reply(c.intent, [], c.language, "friendly")
        if promises.promises_follow_up(body):
            raise SystemExit(f"template's reply would be held for a person: {email.subject!r}")


def catalogue_for(emails: list[BenchEmail]) -> Any:
    """An indexed fake-shop catalogue holding each customer's order."""
    from worker.devstack.fake_shopify import Catalogue, Fulfillment, Order, Tracking

    class IndexedCatalogue(Catalogue):
        # The fake's own lookups scan every order; at 100,000 orders that is the fake's cost,
        # not the worker's, so index them.
        def __init__(self) -> None:
            super().__init__(shop_name="Bench Shop")
            self._by_email: dict[str, list[Order]] = {}
            self._by_name: dict[str, list[Order]] = {}

        def add(self, order: Order) -> Order:
            self._by_email.setdefault(order.email.lower(), []).append(order)
            self._by_name.setdefault(order.name, []).append(order)
            return order

        def by_email(self, email: str) -> list[Order]:
            return list(self._by_email.get(email.strip().lower(), []))

        def by_name(self, name: str) -> list[Order]:
            return list(self._by_name.get(name, []))

    catalogue = IndexedCatalogue()
    for email in emails:
        shipped = email.index % 3 != 0
        catalogue.add(
            Order(
                name=f"#{email.order_number}",
                email=email.customer,
                created_at="2025-10-01T12:00:00Z",
                fulfillment_status="FULFILLED" if shipped else "UNFULFILLED",
                line_items=[
                    ("Camiseta Algodão - M" if email.language == "pt" else "Linen Shirt", 1)
                ],
                fulfillments=[
                    Fulfillment(
                        status="IN_TRANSIT",
                        estimated_delivery_at="2025-10-08T23:59:00Z",
                        tracking=[Tracking(f"BR{email.index:09d}BR", "Correios", None)],
                    )
                ]
                if shipped
                else [],
            )
        )
    return catalogue


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (0 < fraction <= 1) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --- child servers ---------------------------------------------------------------------------


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def serve(argv: list[str]) -> None:
    """Child mode: run one stand-in server until SIGTERM, then print its request count."""
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("claude", "shopify", "smtp"))
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--emails", type=int, default=0)
    parser.add_argument("--stores", type=int, default=1)
    parser.add_argument("--run-tag", default="")
    parser.add_argument("--ca-dir", default="")
    parser.add_argument("--log", default="")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # socketserver's listen backlog is 5: a burst of hundreds of new connections (the worker
    # opens one per concurrent call at start) would be refused, which the real APIs never do.
    from http.server import ThreadingHTTPServer

    ThreadingHTTPServer.request_queue_size = LISTEN_BACKLOG
    server: Any
    if args.kind == "claude":
        from worker.devstack.fake_claude import FakeClaude

        server = FakeClaude(api_key=ANTHROPIC_KEY, latency_seconds=args.latency).start()
        address = server.base_url
    elif args.kind == "shopify":
        from worker.devstack.fake_shopify import FakeShopify

        emails = customer_emails(args.emails, args.stores, args.run_tag)
        server = FakeShopify(
            catalogue_for(emails), access_token=SHOPIFY_TOKEN, latency_seconds=args.latency
        ).start()
        address = server.base_url
    else:
        server = _recording_sink(Path(args.ca_dir), Path(args.log)).start()
        address = f"{server.host}:{server.port}"
    print(f"READY {address}", flush=True)
    stop.wait()
    count = len(getattr(server, "requests", [])) if args.kind != "smtp" else 0
    server.stop()
    print(f"REQUESTS {count}", flush=True)


def _recording_sink(ca_dir: Path, log_path: Path) -> Any:
    """An SMTP sink that appends `<unix time>\\t<In-Reply-To>` per accepted message."""
    from worker.devstack.smtp_sink import ReceivedMessage, SmtpSink

    class RecordingSink(SmtpSink):
        def __init__(self) -> None:
            ca = TestCA(
                directory=ca_dir,
                ca_file=ca_dir / "ca.pem",
                cert_file=ca_dir / "server.pem",
                key_file=ca_dir / "server.key",
            )
            super().__init__(ca, username=SMTP_USER, password=SMTP_PASSWORD)
            self._log = log_path.open("a", buffering=1)

        def _record(self, message: ReceivedMessage) -> None:
            # Kept out of memory: a 100,000-email run would otherwise hold every reply.
            match = IN_REPLY_TO.search(message.data)
            ref = match.group(1).decode() if match else "-"
            with self._lock:
                self._log.write(f"{time.time():.6f}\t{ref}\t{','.join(message.rcpt_tos)}\n")

    return RecordingSink()


@dataclass
class Child:
    """A child server process and its address."""

    process: subprocess.Popen[str]
    address: str

    def stop(self) -> int:
        """SIGTERM it and return the request count it reports."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            out, _ = self.process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        found = re.search(r"REQUESTS (\d+)", out or "")
        return int(found.group(1)) if found else 0


def start_child(*args: str) -> Child:
    process_ = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        preexec_fn=_die_with_parent,
    )
    assert process_.stdout is not None
    line = process_.stdout.readline().strip()
    if not line.startswith("READY "):
        process_.kill()
        raise RuntimeError(f"child {args[0]} did not start: {line!r}")
    return Child(process_, line.split(" ", 1)[1])


# --- database ------------------------------------------------------------------------------


def prepare_database(pgport: int, database: str, enable_statements: bool) -> str:
    """scripts/local-db --fresh on our own port; returns DATABASE_URL."""
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(pgport), PGUSER="postgres")
    env["PGDATABASE"] = database
    if database != "postgres":
        # pg_cron stays where it is (moving it restarts a shared cluster), and it only schedules
        # from its own database: a scratch database gets every migration but those that touch
        # pg_cron (schedules, which the bench replaces with its own triggers).
        env.setdefault("CRON_DATABASE", "postgres")
        env["MIGRATIONS_DIR"] = str(migrations_without_pg_cron())
    proc = subprocess.run(
        [str(ROOT / "scripts" / "local-db"), "--fresh"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    if proc.returncode != 0:
        raise SystemExit(f"scripts/local-db failed:\n{proc.stderr[-3000:]}")
    url = proc.stdout.strip().splitlines()[-1].removeprefix("DATABASE_URL=")
    if enable_statements:
        enable_pg_stat_statements(url, pgport)
    return url


def as_platform_admin(pgport: int, database: str, sql: str) -> str:
    """Run one statement as the platform superuser; returns its output.

    `postgres` is not a superuser (scripts/local-db, as on Supabase): reading server settings
    and creating pg_stat_statements take the platform superuser, who logs in by peer
    authentication from the postgres OS user.
    """
    command = (
        f"psql -X -p {pgport} -U supabase_admin -d {shlex.quote(database)}"
        f" -Atc {shlex.quote(sql)}"
    )
    return subprocess.run(
        ["su", "postgres", "-c", command], check=True, capture_output=True, text=True
    ).stdout.strip()


def enable_pg_stat_statements(url: str, pgport: int) -> None:
    """Load pg_stat_statements in the bench's own cluster (a drop-in after local-db's)."""
    from urllib.parse import urlsplit

    import psycopg

    database = urlsplit(url).path.lstrip("/") or "postgres"
    preload = as_platform_admin(pgport, database, "show shared_preload_libraries")
    config = as_platform_admin(pgport, database, "show config_file")
    if "pg_stat_statements" not in preload:
        libraries = ",".join(
            x for x in [*preload.replace(" ", "").split(","), "pg_stat_statements"] if x
        )
        dropin = Path(config).parent / "conf.d" / "90-bench-pipeline.conf"
        dropin.write_text(
            "# Written by bench/pipeline.py: count statements per email.\n"
            f"shared_preload_libraries = '{libraries}'\n"
        )
        subprocess.run(["pg_ctlcluster", "15", f"port{pgport}", "restart"], check=True)
    deadline = time.monotonic() + START_WAIT
    while True:
        try:
            with psycopg.connect(url, autocommit=True):
                pass
            as_platform_admin(pgport, database, "create extension if not exists pg_stat_statements")
            return
        except (psycopg.OperationalError, subprocess.CalledProcessError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@dataclass
class DbCounters:
    xacts: int
    statements: int | None


def db_counters(conn: Any) -> DbCounters:
    """Committed + rolled-back transactions of the database, and statements if tracked."""
    row = conn.execute(
        "select xact_commit + xact_rollback from pg_stat_database"
        " where datname = current_database()"
    ).fetchone()
    xacts = int(row[0]) if row else 0
    statements = None
    if conn.execute("select 1 from pg_extension where extname = 'pg_stat_statements'").fetchone():
        row = conn.execute(
            "select coalesce(sum(calls), 0) from pg_stat_statements s"
            " join pg_database d on d.oid = s.dbid where d.datname = current_database()"
        ).fetchone()
        statements = int(row[0]) if row else 0
    return DbCounters(xacts, statements)


def create_stores(
    url: str,
    stores: int,
    dovecot: DovecotServer,
    smtp: str,
    shopify: bool,
    credits: int,
    imap_address: tuple[str, int] | None = None,
) -> list[str]:
    """Create the stores through the admin API, as an operator would.

    `imap_address` replaces Dovecot's IMAPS address (bench/scale puts a latency proxy there).
    """
    imap_host, imap_port = imap_address or (dovecot.host, dovecot.imaps_port)
    from worker.db import Database
    from worker.db.pg import PgTransport

    smtp_host, smtp_port = smtp.rsplit(":", 1)
    ids = []
    with Database(PgTransport(url, max_size=2)) as db:
        for i in range(stores):
            store: dict[str, Any] = {
                "name": f"Bench Store {i}",
                "support_email": store_address(i),
                "imap_host": imap_host,
                "imap_port": imap_port,
                "imap_user": store_address(i),
                "imap_tls": "ssl",
                "smtp_host": smtp_host,
                "smtp_port": int(smtp_port),
                "smtp_user": SMTP_USER,
                "smtp_tls": "starttls",
                "credits": credits,
                "reply_signature": f"Equipe Bench Store {i}",
            }
            secrets = {"imap_password": IMAP_PASSWORD, "smtp_password": SMTP_PASSWORD}
            if shopify:
                store["shopify_domain"] = f"bench-store-{i}.myshopify.com"
                secrets["shopify_token"] = SHOPIFY_TOKEN
            ids.append(db.admin_create_store(store, secrets))
    return ids


# --- gunicorn ------------------------------------------------------------------------------


def docker_cmd() -> list[str]:
    """The Dockerfile's CMD (exec form), so the bench runs the worker exactly as the image."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    for line in text.splitlines():
        if line.strip().upper().startswith("CMD "):
            argv = json.loads(line.strip()[4:])
            argv[0] = str(Path(sys.executable).with_name(argv[0]))  # the venv's gunicorn
            return [str(a) for a in argv]
    raise SystemExit("no CMD in the Dockerfile")


def http(port: int, method: str, path: str) -> tuple[int, dict[str, Any]]:
    data = b"{}" if method == "POST" else None  # what pg_net sends
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {WORKER_SECRET}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@contextmanager
def gunicorn(env: dict[str, str], log_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The worker under gunicorn, as the image runs it; stopped with SIGTERM on exit."""
    port = free_port()
    env = {**env, "PORT": str(port), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            docker_cmd(),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    try:
        deadline = time.monotonic() + START_WAIT
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"gunicorn exited:\n{log_path.read_text()[-3000:]}")
            try:
                if http(port, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"gunicorn never answered:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def process_tree(pid: int) -> list[int]:
    """pid and its direct children (gunicorn's master and its worker)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                pids.append(int(entry.name))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / CLK_TCK


# --- the run -------------------------------------------------------------------------------


@dataclass
class Result:
    emails: int
    stores: int
    replies: int
    wall_seconds: float
    emails_per_hour: float
    latency_median_s: float
    latency_p95_s: float
    worker_cpu_ms_per_email: float
    db_xacts_per_email: float
    db_statements_per_email: float | None
    claude_calls_per_email: float
    shopify_calls_per_email: float
    external_latency_s: float
    bound_emails_per_hour: int | None
    ratio_to_bound: float | None
    settings: dict[str, Any] = field(default_factory=dict)


def deliver(dovecot: DovecotServer, emails: list[BenchEmail], arrivals: dict[str, float]) -> None:
    """Write the emails into their stores' Maildirs, recording each one's arrival time."""
    for email in emails:
        dovecot.deliver(store_address(email.store), [to_mime(email, time.time())])
        arrivals[email.message_id] = time.time()


def paced_delivery(
    dovecot: DovecotServer,
    emails: list[BenchEmail],
    arrivals: dict[str, float],
    per_hour: float,
    stop: threading.Event,
) -> threading.Thread:
    """Deliver at a steady rate in the background (open-loop arrivals)."""

    def run() -> None:
        start = time.monotonic()
        for i, email in enumerate(emails):
            due = start + i * 3600.0 / per_hour
            if stop.wait(max(0.0, due - time.monotonic())):
                return
            deliver(dovecot, [email], arrivals)

    thread = threading.Thread(target=run, name="feeder", daemon=True)
    thread.start()
    return thread


def read_sink_log(path: Path) -> list[tuple[float, str]]:
    lines = path.read_text().splitlines() if path.exists() else []
    out = []
    for line in lines:
        stamp, _, rest = line.partition("\t")
        out.append((float(stamp), rest.partition("\t")[0]))
    return out


def run(args: argparse.Namespace) -> Result:
    """The whole benchmark; returns its result (servers are stopped on return)."""
    run_tag = f"{int(time.time())}"
    emails = customer_emails(args.emails, args.stores, run_tag)
    check_sendable(emails)
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    work.chmod(0o755)
    with ExitStack() as stack:
        url = args.database_url or prepare_database(
            args.pgport, args.database, not args.no_pg_stat_statements
        )
        ca = create_test_ca(work / "ca")
        (work / "dovecot").mkdir()
        dovecot = stack.enter_context(DovecotServer(ca, directory=work / "dovecot"))
        for i in range(args.stores):
            dovecot.add_user(store_address(i), IMAP_PASSWORD)
        claude = start_child("claude", "--latency", str(args.claude_latency))
        stack.callback(claude.stop)
        shopify = start_child(
            "shopify",
            "--latency",
            str(args.shopify_latency),
            "--emails",
            str(args.emails),
            "--stores",
            str(args.stores),
            "--run-tag",
            run_tag,
        )
        stack.callback(shopify.stop)
        sink_log = work / "sink.log"
        sink = start_child("smtp", "--ca-dir", str(ca.directory), "--log", str(sink_log))
        stack.callback(sink.stop)
        create_stores(url, args.stores, dovecot, sink.address, True, args.emails + 100)

        env = {
            "DATABASE_URL": url,
            "WORKER_SECRET": WORKER_SECRET,
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "ANTHROPIC_BASE_URL": claude.address,
            "SHOPIFY_BASE_URL": shopify.address,
            "EXTRA_CA_FILE": str(ca.ca_file),
            "PROCESS_CONCURRENCY": str(args.concurrency),
            "FETCH_MAX_PER_STORE": str(args.fetch_max_per_store),
            # A throughput run answers far more than a store's hourly reply rate allows.
            "STORE_REPLIES_PER_HOUR": str(args.emails + 100),
            "LOG_LEVEL": args.log_level,
        }
        settings = {
            "PROCESS_CONCURRENCY": args.concurrency,
            "FETCH_MAX_PER_STORE": args.fetch_max_per_store,
            "claude_latency_s": args.claude_latency,
            "shopify_latency_s": args.shopify_latency,
            "fetch_every_s": args.fetch_every,
            "process_every_s": args.process_every,
            "arrival": f"{args.arrival_rate:g}/h" if args.arrival_rate else "all at start",
            "cpus": os.cpu_count(),
        }
        print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), flush=True)
        gproc, port = stack.enter_context(gunicorn(env, work / "gunicorn.log"))
        pids = process_tree(gproc.pid)

        arrivals: dict[str, float] = {}
        stop_feeder = threading.Event()
        stack.callback(stop_feeder.set)
        # Opened before the first trigger: at high concurrency the worker may take every slot.
        stats = stack.enter_context(psycopg.connect(url, autocommit=True))
        db_before = db_counters(stats)
        cpu_before = cpu_seconds(pids)
        started = time.time()
        if args.arrival_rate:
            paced_delivery(dovecot, emails, arrivals, args.arrival_rate, stop_feeder)
        else:
            deliver(dovecot, emails, arrivals)
        deadline = time.monotonic() + args.timeout
        next_fetch = next_process = 0.0
        replies: list[tuple[float, str]] = []
        while True:
            now = time.monotonic()
            # As pg_cron's two jobs would, only faster; a trigger during a run answers 409.
            if now >= next_fetch:
                http(port, "POST", "/fetch-emails")
                next_fetch = now + args.fetch_every
            if now >= next_process:
                http(port, "POST", "/process-queue")
                next_process = now + args.process_every
            replies = read_sink_log(sink_log)
            if len(replies) >= len(emails):
                break
            if gproc.poll() is not None:
                raise SystemExit(f"gunicorn died:\n{(work / 'gunicorn.log').read_text()[-3000:]}")
            if now > deadline:
                raise SystemExit(
                    f"timed out with {len(replies)} of {len(emails)} replies; see {work}"
                )
            time.sleep(POLL_SECONDS)
        finished = max(stamp for stamp, _ in replies)
        cpu_after = cpu_seconds(pids)
        db_after = db_counters(stats)
        claude_calls, shopify_calls = claude.stop(), shopify.stop()

    latencies = [stamp - arrivals[ref] for stamp, ref in replies if ref in arrivals]
    if len(latencies) != len(emails):
        raise SystemExit(f"{len(latencies)} replies matched {len(emails)} emails")
    n = len(emails)
    wall = finished - started
    per_email_external = (
        claude_calls / n * args.claude_latency + shopify_calls / n * args.shopify_latency
    )
    # No bound without latency (the smoke test): then only our own code limits the rate.
    bound = args.concurrency / per_email_external * 3600 if per_email_external else None
    rate = n / wall * 3600
    statements = (
        (db_after.statements - db_before.statements) / n
        if db_after.statements is not None and db_before.statements is not None
        else None
    )
    result = Result(
        emails=n,
        stores=args.stores,
        replies=len(replies),
        wall_seconds=round(wall, 2),
        emails_per_hour=round(rate),
        latency_median_s=round(statistics.median(latencies), 2),
        latency_p95_s=round(percentile(latencies, 0.95), 2),
        worker_cpu_ms_per_email=round((cpu_after - cpu_before) * 1000 / n, 1),
        db_xacts_per_email=round((db_after.xacts - db_before.xacts) / n, 1),
        db_statements_per_email=round(statements, 1) if statements is not None else None,
        claude_calls_per_email=round(claude_calls / n, 2),
        shopify_calls_per_email=round(shopify_calls / n, 2),
        external_latency_s=round(per_email_external, 2),
        bound_emails_per_hour=round(bound) if bound else None,
        ratio_to_bound=round(rate / bound, 3) if bound else None,
        settings=settings,
    )
    if not args.keep:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    else:
        print(f"kept {work}", flush=True)
    return result


def table(result: Result) -> str:
    """The result as one plain-text table."""
    stmts = (
        f"{result.db_statements_per_email} (pg_stat_statements calls, incl. BEGIN/COMMIT)"
        if result.db_statements_per_email is not None
        else "n/a (pg_stat_statements not loaded)"
    )
    rows = [
        ("emails", f"{result.emails} over {result.stores} stores ({result.replies} replies)"),
        ("wall seconds", f"{result.wall_seconds}"),
        ("emails per hour", f"{result.emails_per_hour:,}"),
        ("latency arrival->reply median", f"{result.latency_median_s} s"),
        ("latency arrival->reply p95", f"{result.latency_p95_s} s"),
        ("worker CPU per email", f"{result.worker_cpu_ms_per_email} ms (gunicorn utime+stime)"),
        ("db transactions per email", f"{result.db_xacts_per_email} (pg_stat_database delta)"),
        ("db statements per email", stmts),
        (
            "claude / shopify calls per email",
            f"{result.claude_calls_per_email} / {result.shopify_calls_per_email}",
        ),
        ("external latency per email", f"{result.external_latency_s} s"),
        (
            "bound (concurrency / latency)",
            f"{result.bound_emails_per_hour:,} emails/h"
            if result.bound_emails_per_hour is not None
            else "none (no external latency)",
        ),
        ("actual / bound", f"{result.ratio_to_bound}"),
        ("settings", ", ".join(f"{k}={v}" for k, v in result.settings.items())),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        _die_with_parent()
        serve(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=5000)
    parser.add_argument("--stores", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=256, help="PROCESS_CONCURRENCY")
    parser.add_argument("--claude-latency", type=float, default=1.5, help="seconds per call")
    parser.add_argument("--shopify-latency", type=float, default=0.3, help="seconds per call")
    parser.add_argument("--fetch-max-per-store", type=int, default=500)
    parser.add_argument(
        "--fetch-every", type=float, default=5.0, help="seconds between /fetch-emails triggers"
    )
    parser.add_argument(
        "--process-every", type=float, default=1.0, help="seconds between /process-queue triggers"
    )
    parser.add_argument(
        "--arrival-rate",
        type=float,
        default=0.0,
        help="emails per hour delivered steadily during the run (0: all at the start)",
    )
    parser.add_argument("--pgport", type=int, default=5453)
    parser.add_argument("--database", default="postgres")
    parser.add_argument("--database-url", help="use this database instead of preparing one")
    parser.add_argument("--no-pg-stat-statements", action="store_true")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole run")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    result = run(args)
    print(table(result))
    if args.json:
        print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
