"""Settings read once from the environment and validated all at once.

Every variable of docs/design.md is here with its type, default and unit. A bad environment fails
at start-up with one ConfigError naming every problem, so an operator fixes them in one go instead
of discovering them one restart at a time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from worker.errors import ConfigError

Responder = Literal["claude", "offline"]
DatabaseBackend = Literal["postgres", "supabase"]
PreparedStatements = Literal["auto", "on", "off"]

MIN_WORKER_SECRET_CHARS = 16
# Supabase's secret API keys (the replacement of the service_role JWT) look like sb_secret_...
SECRET_KEY_PREFIX = "sb_secret_"  # noqa: S105 (a prefix, not a secret)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Shopify releases a stable version each quarter, named for its month: YYYY-01, -04, -07, -10.
_SHOPIFY_VERSION = re.compile(r"^(\d{4}-(01|04|07|10)|unstable)$")
_SECRET_FIELDS = frozenset(
    {"supabase_service_role_key", "worker_secret", "anthropic_api_key", "supabase_secret_key",
     "supabase_jwt_secret"}
)
# The newest stable Admin API version on 2026-12-01; worker/shopify_versions.py warns at start-up
# once the configured one leaves Shopify's support window.
DEFAULT_SHOPIFY_API_VERSION = "2026-10"
MIN_JWT_SECRET_CHARS = 32  # Supabase's JWT secrets are at least 32 characters

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """The worker's whole configuration; field names are the env var names in lower case."""

    database_url: str | None = None
    supabase_url: str | None = None
    supabase_service_role_key: str | None = None
    worker_secret: str | None = None
    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None
    claude_model: str = "claude-haiku-4-5"
    claude_timeout_seconds: float = 30.0
    shopify_api_version: str = DEFAULT_SHOPIFY_API_VERSION
    shopify_base_url: str | None = None
    fetch_concurrency: int = 10
    # Messages one mailbox read takes (a backlog gets follow-up reads): 200 drains a backlog at
    # the rate of one read for all of it, 1.7x the rate at 50, and the other stores' mail is
    # stored as soon either way (bench/fetch_bound.py, decision 0022); a read's memory is capped
    # by imap.MAX_BATCH_BYTES whatever this says.
    fetch_max_per_store: int = 200
    store_timeout_seconds: float = 60.0
    imap_timeout_seconds: float = 30.0
    smtp_timeout_seconds: float = 30.0
    max_message_bytes: int = 26_214_400
    run_budget_seconds: float = 110.0
    process_concurrency: int = 16
    # A SIGKILLed worker's jobs wait out the lease before another worker takes them. The runner
    # renews leases every third of it, so 30 s recovers in about half a minute and still rides
    # out one missed heartbeat.
    lease_seconds: int = 30
    reply_cap_per_customer: int = 3
    reply_cap_window_hours: int = 24
    extra_ca_file: str | None = None
    db_timeout_seconds: float = 10.0
    log_level: str = "INFO"
    port: int = 8080
    # -- operations (h4-ops): Supabase's new secret API key, beside the legacy service-role JWT
    supabase_secret_key: str | None = None
    # h6-hostile (issue 13): bounded parsing of inbound mail (worker/parse_pool.py).
    parse_processes: int = 1
    parse_timeout_seconds: float = 10.0
    parse_memory_mb: int = 320
    # h6-hostile (issue 13): replies one store may reserve per hour, whoever the senders are.
    store_replies_per_hour: int = 120
    # Connection pooling (h3-localstack, issue 17). Supabase's transaction pooler (Supavisor on
    # port 6543, or pgbouncer in transaction mode) cannot keep prepared statements or session
    # settings: 'auto' treats port 6543 as that pooler, 'off' forces pooler mode, 'on' never.
    # 7 connections per machine (issue 14, docs/scaling.md): one machine at 16 slots answers as
    # fast with a pool of 5 as with 15 (bench/scale.py), and two machines then fit the smallest
    # plans' session-pooler pool of 15 server connections, with one left for a CLI.
    database_prepared_statements: PreparedStatements = "auto"
    db_pool_max: int = 7

    @property
    def supabase_key(self) -> str | None:
        """The key the supabase-py backend sends: the secret key, else the legacy JWT."""
        return self.supabase_secret_key or self.supabase_service_role_key
    # -- console (issue 11): people sign in with Supabase Auth --------------------------------
    # SUPABASE_AUTH_URL defaults to SUPABASE_URL + /auth/v1; the psycopg backend names it
    # itself. SUPABASE_JWT_SECRET verifies access tokens (HS256, the project's JWT secret).
    supabase_auth_url: str | None = None
    supabase_anon_key: str | None = None
    supabase_jwt_secret: str | None = None
    # -- notifications (s2-notify, issue 12): digests link to the console at CONSOLE_URL (the
    # worker's public URL, e.g. https://<app>.fly.dev; unset: digests carry no links). A store's
    # webhook gets WEBHOOK_TIMEOUT_SECONDS; its host must be public unless
    # WEBHOOK_ALLOW_PRIVATE_HOSTS=true (tests and the demo post to loopback).
    console_url: str | None = None
    webhook_timeout_seconds: float = 10.0
    webhook_allow_private_hosts: bool = False

    @property
    def console_enabled(self) -> bool:
        """Whether the console can sign people in (Auth URL, anon key and JWT secret set)."""
        return bool(self.supabase_auth_url and self.supabase_anon_key and self.supabase_jwt_secret)

    @property
    def responder(self) -> Responder:
        """'claude' when an Anthropic key is configured, else the offline responder."""
        return "claude" if self.anthropic_api_key else "offline"

    @property
    def database_backend(self) -> DatabaseBackend:
        """'postgres' (psycopg over DATABASE_URL) or 'supabase' (PostgREST RPC)."""
        return "postgres" if self.database_url else "supabase"

    def __repr__(self) -> str:
        # Settings end up in logs and tracebacks; secrets (and the password inside DATABASE_URL)
        # must never be printed, but whether they are set is useful to see.
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS and value is not None:
                shown = "'***'"
            elif f.name == "database_url" and value is not None:
                shown = repr(redact_url(value))
            else:
                shown = repr(value)
            parts.append(f"{f.name}={shown}")
        return f"Settings({', '.join(parts)})"


def redact_url(url: str) -> str:
    """The URL with any password replaced by '***', safe to log."""
    try:
        split = urlsplit(url)
        if split.password is None:
            return url
        host = split.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        userinfo = f"{split.username}:***@" if split.username is not None else ":***@"
        port = f":{split.port}" if split.port is not None else ""
        return urlunsplit(split._replace(netloc=f"{userinfo}{host}{port}"))
    except ValueError:
        return "<unparseable url>"


# Each setting's default is written once, on its Settings field; load_settings and the run
# options (fetch.FetchOptions, process.ProcessOptions) read it from here.
DEFAULTS = Settings()


class _Reader:
    """Reads variables from one mapping, collecting every problem instead of stopping.

    Variables are named by their Settings field (the env var is its upper-case name), and a
    missing or malformed value falls back to that field's default.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def default(self, field: str, kind: type[T]) -> T:
        value = getattr(DEFAULTS, field)
        if not isinstance(value, kind):
            raise TypeError(f"Settings.{field} has no {kind.__name__} default")
        return value

    def raw(self, name: str) -> str | None:
        # An empty value (`FOO=` in an env file) means "not set", as docker and systemd treat it.
        value = self.environ.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def text(self, field: str) -> str:
        return self.raw(field.upper()) or self.default(field, str)

    def parsed(
        self, name: str, default: T, parse: Callable[[str], T | None], expectation: str
    ) -> T:
        text = self.raw(name)
        if text is None:
            return default
        value = parse(text)
        if value is None:
            self.problems.append(f"{name} must be {expectation}, got {text!r}")
            return default
        return value

    def positive_int(self, field: str, *, maximum: int | None = None) -> int:
        def parse(text: str) -> int | None:
            try:
                number = int(text, 10)
            except ValueError:
                return None
            if number <= 0 or (maximum is not None and number > maximum):
                return None
            return number

        expectation = "a positive integer" + (f" no greater than {maximum}" if maximum else "")
        return self.parsed(field.upper(), self.default(field, int), parse, expectation)

    def positive_seconds(self, field: str) -> float:
        def parse(text: str) -> float | None:
            try:
                number = float(text)
            except ValueError:
                return None
            # float() accepts 'nan' and 'inf'; neither is a usable timeout.
            return number if 0 < number < float("inf") else None

        default = self.default(field, float)
        return self.parsed(field.upper(), default, parse, "a positive number of seconds")

    def http_url(self, name: str) -> str | None:
        def parse(text: str) -> str | None:
            split = urlsplit(text)
            if split.scheme not in ("http", "https") or not split.hostname:
                return None
            return text.rstrip("/")

        return self.parsed(name, None, parse, "an http(s) URL such as https://host")


def _parse_database_url(text: str) -> str | None:
    split = urlsplit(text)
    if split.scheme not in ("postgres", "postgresql"):
        return None
    return text


_PREPARED_STATEMENTS: dict[str, PreparedStatements] = {"auto": "auto", "on": "on", "off": "off"}


def _parse_prepared_statements(text: str) -> PreparedStatements | None:
    return _PREPARED_STATEMENTS.get(text.lower())


_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _parse_bool(text: str) -> bool | None:
    return _BOOLEANS.get(text.lower())


def load_settings(
    environ: Mapping[str, str] | None = None, *, require_worker_secret: bool = True
) -> Settings:
    """Settings from `environ` (default os.environ); raises ConfigError listing every problem.

    Tools that only talk to the database (store CLI, requeue) pass require_worker_secret=False.
    """
    env = _Reader(os.environ if environ is None else environ)
    problems = env.problems

    database_url = env.raw("DATABASE_URL")
    if database_url is not None and _parse_database_url(database_url) is None:
        # The URL carries the password, so the message names the problem, not the value.
        problems.append("DATABASE_URL must be a postgresql:// URL")
        database_url = None
    supabase_url = env.http_url("SUPABASE_URL")
    service_key = env.raw("SUPABASE_SERVICE_ROLE_KEY")
    secret_key = env.raw("SUPABASE_SECRET_KEY")
    has_db_url = env.raw("DATABASE_URL") is not None
    has_supabase = (
        env.raw("SUPABASE_URL") is not None or service_key is not None or secret_key is not None
    )
    keys = "SUPABASE_SECRET_KEY (or the legacy SUPABASE_SERVICE_ROLE_KEY)"
    if has_db_url and has_supabase:
        problems.append(
            f"set exactly one database backend: DATABASE_URL, or SUPABASE_URL with {keys}, "
            "not both"
        )
    elif not has_db_url and not has_supabase:
        problems.append(f"no database configured: set DATABASE_URL, or SUPABASE_URL and {keys}")
    elif has_supabase:
        if env.raw("SUPABASE_URL") is None:
            problems.append("SUPABASE_URL is missing (a Supabase key is set)")
        if service_key is None and secret_key is None:
            problems.append(f"{keys} is missing (SUPABASE_URL is set)")
        if service_key is not None and secret_key is not None:
            problems.append(
                "set one Supabase key, not both: SUPABASE_SECRET_KEY (sb_secret_...) or the "
                "legacy SUPABASE_SERVICE_ROLE_KEY"
            )
        if secret_key is not None and not secret_key.startswith(SECRET_KEY_PREFIX):
            # The value is a secret: the message names the expected shape, not the value.
            problems.append(
                f"SUPABASE_SECRET_KEY must be a secret API key starting with {SECRET_KEY_PREFIX}"
                " (a legacy service_role JWT goes in SUPABASE_SERVICE_ROLE_KEY)"
            )

    worker_secret = env.raw("WORKER_SECRET")
    if worker_secret is None:
        if require_worker_secret:
            problems.append("WORKER_SECRET is missing")
    elif len(worker_secret) < MIN_WORKER_SECRET_CHARS:
        problems.append(
            f"WORKER_SECRET must be at least {MIN_WORKER_SECRET_CHARS} characters, "
            f"got {len(worker_secret)}"
        )

    log_level = env.parsed(
        "LOG_LEVEL",
        env.default("log_level", str),
        lambda text: text.upper() if text.upper() in LOG_LEVELS else None,
        "one of " + ", ".join(LOG_LEVELS),
    )
    shopify_api_version = env.parsed(
        "SHOPIFY_API_VERSION",
        env.default("shopify_api_version", str),
        lambda text: text if _SHOPIFY_VERSION.match(text) else None,
        f"a Shopify API version (YYYY-01, -04, -07 or -10) such as {DEFAULT_SHOPIFY_API_VERSION}",
    )

    # -- console (issue 11) --
    auth_url = env.http_url("SUPABASE_AUTH_URL")
    if auth_url is None and supabase_url is not None:
        auth_url = supabase_url + "/auth/v1"
    jwt_secret = env.raw("SUPABASE_JWT_SECRET")
    if jwt_secret is not None and len(jwt_secret) < MIN_JWT_SECRET_CHARS:
        problems.append(
            f"SUPABASE_JWT_SECRET must be at least {MIN_JWT_SECRET_CHARS} characters, "
            f"got {len(jwt_secret)}"
        )
        jwt_secret = None

    settings = Settings(
        database_url=database_url,
        supabase_url=supabase_url,
        supabase_service_role_key=service_key,
        worker_secret=worker_secret,
        anthropic_api_key=env.raw("ANTHROPIC_API_KEY"),
        anthropic_base_url=env.http_url("ANTHROPIC_BASE_URL"),
        claude_model=env.text("claude_model"),
        claude_timeout_seconds=env.positive_seconds("claude_timeout_seconds"),
        shopify_api_version=shopify_api_version,
        shopify_base_url=env.http_url("SHOPIFY_BASE_URL"),
        fetch_concurrency=env.positive_int("fetch_concurrency"),
        fetch_max_per_store=env.positive_int("fetch_max_per_store"),
        store_timeout_seconds=env.positive_seconds("store_timeout_seconds"),
        imap_timeout_seconds=env.positive_seconds("imap_timeout_seconds"),
        smtp_timeout_seconds=env.positive_seconds("smtp_timeout_seconds"),
        max_message_bytes=env.positive_int("max_message_bytes"),
        run_budget_seconds=env.positive_seconds("run_budget_seconds"),
        process_concurrency=env.positive_int("process_concurrency"),
        lease_seconds=env.positive_int("lease_seconds"),
        reply_cap_per_customer=env.positive_int("reply_cap_per_customer"),
        reply_cap_window_hours=env.positive_int("reply_cap_window_hours"),
        extra_ca_file=env.raw("EXTRA_CA_FILE"),
        db_timeout_seconds=env.positive_seconds("db_timeout_seconds"),
        log_level=log_level,
        port=env.positive_int("port", maximum=65535),
        # -- operations (h4-ops)
        supabase_secret_key=secret_key,
        # h6-hostile (issue 13): bounded parsing of inbound mail.
        parse_processes=env.positive_int("parse_processes", maximum=16),
        parse_timeout_seconds=env.positive_seconds("parse_timeout_seconds"),
        parse_memory_mb=env.positive_int("parse_memory_mb"),
        store_replies_per_hour=env.positive_int("store_replies_per_hour"),
        # -- console (issue 11) --
        supabase_auth_url=auth_url,
        supabase_anon_key=env.raw("SUPABASE_ANON_KEY"),
        supabase_jwt_secret=jwt_secret,
        # Connection pooling (h3-localstack, issue 17).
        database_prepared_statements=env.parsed(
            "DATABASE_PREPARED_STATEMENTS",
            DEFAULTS.database_prepared_statements,
            _parse_prepared_statements,
            "one of auto, on, off",
        ),
        db_pool_max=env.positive_int("db_pool_max"),
        # -- notifications (s2-notify, issue 12)
        console_url=env.http_url("CONSOLE_URL"),
        webhook_timeout_seconds=env.positive_seconds("webhook_timeout_seconds"),
        webhook_allow_private_hosts=env.parsed(
            "WEBHOOK_ALLOW_PRIVATE_HOSTS",
            DEFAULTS.webhook_allow_private_hosts,
            _parse_bool,
            "true or false",
        ),
    )
    if problems:
        raise ConfigError(problems)
    return settings
