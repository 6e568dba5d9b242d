"""The servers the demo starts around the database scripts/demo prepared.

Dovecot and an SMTP sink sharing a throwaway CA, the fake Shopify with the demo catalogue (unless
a real shop is configured), the Supabase Auth stand-in for the console's sign-in, and the worker
under gunicorn, as the Dockerfile runs it, all on loopback. The servers come from
worker.devstack; everything started here is stopped when the stack's ExitStack closes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import seed

from worker.devstack.auth import AuthServer, anon_key
from worker.devstack.dovecot import DovecotServer
from worker.devstack.fake_shopify import FakeShopify, demo_catalogue
from worker.devstack.smtp_sink import SmtpSink
from worker.devstack.tls import create_test_ca
from worker.devstack.webhook_sink import WebhookSink

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT = 60.0  # seconds, for gunicorn to answer /readyz
STOP_TIMEOUT = 45.0  # seconds; above gunicorn's graceful_timeout
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


def tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


class Stack:
    """Owns every process and server the demo starts; `exits` stops them in reverse order."""

    def __init__(self, database_url: str, workdir: Path) -> None:
        self.database_url = database_url
        self.workdir = workdir
        self.exits = contextlib.ExitStack()
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
        # The console's project JWT secret: new for every demo run, never a fixed value.
        self.jwt_secret = secrets.token_urlsafe(48)
        self.auth: AuthServer | None = None
        self.webhook: WebhookSink | None = None

    @property
    def console_url(self) -> str:
        """Where a person signs in to the support console."""
        return f"http://127.0.0.1:{self.worker_port}/login"

    def start_auth(self) -> None:
        step("starting the Supabase Auth stand-in (sign-in for the support console)")
        auth = AuthServer(self.database_url, self.jwt_secret)
        auth.start()
        self.exits.callback(auth.stop)
        self.auth = auth
        say(f"    {auth.url}  (people in auth.users, like Supabase Auth)")

    def start_webhook(self) -> None:
        step("starting a webhook receiver (a Slack incoming webhook's stand-in)")
        hook = WebhookSink()
        hook.start()
        self.exits.callback(hook.stop)
        self.webhook = hook
        say(f"    {hook.url}  (the store's notification webhook)")

    def start_mail(self) -> None:
        step("starting Dovecot (IMAP) and an SMTP sink with a throwaway CA")
        ca = create_test_ca(self.workdir / "ca")
        (self.workdir / "dovecot").mkdir()
        dovecot = DovecotServer(ca, directory=self.workdir / "dovecot")
        dovecot.start()
        self.exits.callback(dovecot.stop)
        self.dovecot = dovecot
        dovecot.add_user(seed.STORE_EMAIL, self.mail_password)
        sink = SmtpSink(ca, username=seed.STORE_EMAIL, password=self.mail_password)
        sink.start()
        self.exits.callback(sink.stop)
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
        step("starting the fake Shopify with the demo catalogue (orders #1001-#1005, 8 products)")
        fake = FakeShopify(demo_catalogue(), access_token=self.shop_token)
        fake.start()
        self.exits.callback(fake.stop)
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
            # Notification digests link to this console; the demo's webhook is on loopback.
            "CONSOLE_URL": f"http://127.0.0.1:{self.worker_port}",
            "WEBHOOK_ALLOW_PRIVATE_HOSTS": "true",
        }
        if self.auth is not None:
            env["SUPABASE_AUTH_URL"] = self.auth.url
            env["SUPABASE_ANON_KEY"] = anon_key(self.jwt_secret)
            env["SUPABASE_JWT_SECRET"] = self.jwt_secret
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
        self.exits.callback(self.stop_worker)
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
            say(
                "    responder: offline responder (no ANTHROPIC_API_KEY) - rule-based;"
                " reads pt and en, writes pt, en and es"
            )

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

    def diagnostics(self) -> list[str]:
        """The gunicorn log's tail and Dovecot's own diagnostics, for a failed run."""
        parts = [f"--- gunicorn log ({self.gunicorn_log})\n{tail(self.gunicorn_log)}"]
        if self.dovecot is not None:
            parts.append(self.dovecot.diagnostics())
        return parts


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
