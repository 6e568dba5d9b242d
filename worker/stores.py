"""The store CLI: `python -m worker stores add|list|show|update|credits|activate|deactivate|check|
members|notify`.

Passwords, the Shopify token and a notification webhook URL never come from a command-line
value (shell history, `ps`): they are read from an environment variable (STORE_IMAP_PASSWORD,
STORE_SMTP_PASSWORD, STORE_SHOPIFY_TOKEN, STORE_NOTIFY_WEBHOOK_URL by default, or the one named
with --imap-password-env and friends) or prompted for without echo, and go straight into
Vault; `stores` keeps only their secret ids.
Settings are validated by the database (validate_store_settings, the same rules admin_*_store
apply), all problems at once, before anything is prompted for or saved.

Exit codes: 0 ok; 1 failed (no such store, a check failed, a database error); 2 usage error or
invalid settings.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker import knowledge_cli
from worker.config import Settings, load_settings
from worker.db import Database, connect
from worker.dlq import Column, dumps, render_table
from worker.errors import ConfigError, DatabaseConstraintError, WorkerError
from worker.models import MailAccount

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

CREDIT_REASONS = ("topup", "adjustment", "grant")
DEFAULT_IMAP_PORTS = {"ssl": 993, "starttls": 143, "plain": 143}
DEFAULT_SMTP_PORTS = {"ssl": 465, "starttls": 587, "plain": 25}
# The column defaults of public.stores (admin_create_store applies the same ones).
STORE_DEFAULTS: dict[str, Any] = {
    "extra_addresses": [],
    "imap_tls": "ssl",
    "imap_folder": "INBOX",
    "smtp_tls": "starttls",
    "credits": 0,
    "active": True,
    "reply_language": "auto",
    "reply_tone": "friendly",
    "reply_mode": "auto_send",
    "mailbox_sent": "auto",
    "mailbox_drafts": True,
    "mailbox_mark_answered": True,
    "low_credits_at": 10,
}
# SQLSTATEs of admin_* refusals: invalid settings, and a missing store.
INVALID_PARAMETER = "22023"
NO_DATA_FOUND = "P0002"
BAD_VALUE = "PT400"  # the knowledge functions' answer to a bad entry


@dataclass(frozen=True)
class Secret:
    """A store secret: its key in admin_*_store's p_secrets, flag stem and default env var."""

    key: str
    flag: str
    env: str
    label: str


SECRETS = (
    Secret("imap_password", "imap-password", "STORE_IMAP_PASSWORD", "IMAP password"),
    Secret("smtp_password", "smtp-password", "STORE_SMTP_PASSWORD", "SMTP password"),
    Secret("shopify_token", "shopify-token", "STORE_SHOPIFY_TOKEN", "Shopify Admin API token"),
)
# A store's notification webhook URL (Slack's is a credential): never a command-line value.
WEBHOOK_SECRET = Secret("webhook_url", "webhook-url", "STORE_NOTIFY_WEBHOOK_URL", "Webhook URL")
SECRET_COLUMNS = {
    "imap_password": "imap_password_secret_id",
    "smtp_password": "smtp_password_secret_id",
    "shopify_token": "shopify_token_secret_id",
}


class UsageError(Exception):
    """A command line or a setting that cannot work (exit 2)."""


# -- pure: settings and formatting ----------------------------------------------------------------


def new_store_settings(given: Mapping[str, Any]) -> dict[str, Any]:
    """The settings `stores add` sends: what was given plus derived ports and user names."""
    store = {key: value for key, value in given.items() if value is not None}
    imap_tls = store.get("imap_tls", STORE_DEFAULTS["imap_tls"])
    smtp_tls = store.get("smtp_tls", STORE_DEFAULTS["smtp_tls"])
    if "imap_port" not in store and imap_tls in DEFAULT_IMAP_PORTS:
        store["imap_port"] = DEFAULT_IMAP_PORTS[imap_tls]
    if "smtp_port" not in store and smtp_tls in DEFAULT_SMTP_PORTS:
        store["smtp_port"] = DEFAULT_SMTP_PORTS[smtp_tls]
    # Mail providers almost always log in with the address itself.
    store.setdefault("imap_user", store.get("support_email"))
    store.setdefault("smtp_user", store.get("imap_user"))
    return store


def normalise_settings(store: Mapping[str, Any]) -> dict[str, Any]:
    """Trimmed strings, lower-case addresses and domain, '' Shopify domain meaning none."""
    result = dict(store)
    for key in ("name", "imap_host", "smtp_host", "reply_tone"):
        if isinstance(result.get(key), str):
            result[key] = result[key].strip()
    if isinstance(result.get("support_email"), str):
        result["support_email"] = result["support_email"].strip().lower()
    if result.get("extra_addresses") is not None:
        result["extra_addresses"] = [
            str(a).strip().lower() for a in result["extra_addresses"] if str(a).strip()
        ]
    if "shopify_domain" in result and isinstance(result["shopify_domain"], str):
        result["shopify_domain"] = result["shopify_domain"].strip().lower() or None
    # '' names no folder: the one with the SPECIAL-USE flag is used again.
    for key in ("mailbox_sent_folder", "mailbox_drafts_folder"):
        if isinstance(result.get(key), str):
            result[key] = result[key].strip() or None
    return result


STORE_COLUMNS = (
    Column("ID"),
    Column("NAME"),
    Column("SUPPORT EMAIL"),
    Column("CREDITS", align_right=True),
    Column("MODE"),
    Column("SHOPIFY"),
)


def store_table(stores: Sequence[Mapping[str, Any]]) -> str:
    """The `list` table; no secrets and no secret ids."""
    rows = [
        [
            str(s["id"]),
            str(s.get("name") or ""),
            str(s.get("support_email") or ""),
            str(s.get("credits", 0)),
            str(s.get("reply_mode") or ""),
            str(s.get("shopify_domain") or "-"),
        ]
        for s in stores
    ]
    return render_table(STORE_COLUMNS, rows)


def public_view(store: Mapping[str, Any]) -> dict[str, Any]:
    """The store row for output: secret ids replaced by whether each secret is set."""
    view = {k: v for k, v in store.items() if k not in SECRET_COLUMNS.values()}
    view["secrets"] = {key: store.get(column) is not None for key, column in SECRET_COLUMNS.items()}
    return view


def store_details(store: Mapping[str, Any]) -> str:
    """The `show` text."""
    view = public_view(store)
    secrets = view.pop("secrets")
    lines = []
    width = max(len(k) for k in [*view, *secrets])
    for key, value in view.items():
        shown = (", ".join(value) or "-") if isinstance(value, list) else value
        lines.append(f"{key.ljust(width)}  {'-' if shown is None else shown}")
    for key, is_set in secrets.items():
        lines.append(f"{key.ljust(width)}  {'set (in Vault)' if is_set else 'not set'}")
    return "\n".join(lines)


# -- secrets ------------------------------------------------------------------------------------


@dataclass
class SecretSource:
    """Where secrets come from: the environment, else a no-echo prompt when interactive."""

    environ: Mapping[str, str]
    prompt: Callable[[str], str] | None

    def read(self, secret: Secret, env_name: str | None) -> str:
        """The secret's value; UsageError (never echoing a value) when there is none."""
        if env_name:
            value = self.environ.get(env_name, "")
            if not value:
                raise UsageError(f"{secret.label}: environment variable {env_name} is not set")
            return value
        value = self.environ.get(secret.env, "")
        if value:
            return value
        if self.prompt is None:
            raise UsageError(
                f"{secret.label} needed: set {secret.env}, pass --{secret.flag}-env NAME, "
                f"or run in a terminal to be prompted"
            )
        value = self.prompt(f"{secret.label}: ")
        if not value:
            raise UsageError(f"{secret.label} must not be empty")
        return value


class _RefuseSecretValue(argparse.Action):
    """A secret typed on the command line would land in shell history: refuse it, unechoed."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        stem = (option_string or "").lstrip("-")
        env = next((s.env for s in (*SECRETS, WEBHOOK_SECRET) if s.flag == stem), "the environment")
        parser.error(
            f"{option_string} takes no value on the command line (it would land in shell "
            f"history); set {env}, use {option_string}-env NAME, or answer the prompt"
        )


# -- argument parsing -----------------------------------------------------------------------------


def _store_id(text: str) -> str:
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad store id {text!r}: not a UUID") from None


def _port(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number, got {text!r}") from None


def _add_setting_flags(parser: argparse.ArgumentParser, *, creating: bool) -> None:
    group = parser.add_argument_group("store settings")
    group.add_argument("--name", required=creating)
    group.add_argument("--support-email", required=creating, metavar="ADDRESS")
    group.add_argument(
        "--extra-address",
        dest="extra_addresses",
        action="append",
        metavar="ADDRESS",
        help="another address of the store, never answered (repeatable"
        + ("" if creating else "; replaces the list")
        + ")",
    )
    group.add_argument("--imap-host", required=creating)
    group.add_argument("--imap-port", type=_port, help="default: 993 (ssl), 143 (starttls)")
    group.add_argument("--imap-user", help="default: the support email")
    group.add_argument("--imap-tls", metavar="ssl|starttls|plain", help="default: ssl")
    group.add_argument("--imap-folder", help="default: INBOX")
    group.add_argument("--smtp-host", required=creating)
    group.add_argument("--smtp-port", type=_port, help="default: 587 (starttls), 465 (ssl)")
    group.add_argument("--smtp-user", help="default: the IMAP user")
    group.add_argument("--smtp-tls", metavar="ssl|starttls|plain", help="default: starttls")
    group.add_argument("--shopify-domain", metavar="SHOP.myshopify.com")
    group.add_argument("--reply-language", help="auto (the customer's) or a tag like pt-BR")
    group.add_argument("--reply-tone", help="e.g. friendly, formal")
    group.add_argument("--reply-signature")
    group.add_argument("--reply-mode", metavar="auto_send|draft_only")
    group.add_argument("--owner-id", metavar="USER_ID", help="auth.users id of the owner")
    mailbox = parser.add_argument_group("the mailbox as the record (README: store settings)")
    mailbox.add_argument(
        "--mailbox-sent",
        metavar="auto|always|never",
        help="file our replies in Sent; auto (default): unless the server files SMTP mail "
        "itself (Gmail)",
    )
    mailbox.add_argument(
        "--mailbox-drafts",
        action=argparse.BooleanOptionalAction,
        help="place held replies in Drafts (default: yes)",
    )
    mailbox.add_argument(
        "--mailbox-mark-answered",
        action=argparse.BooleanOptionalAction,
        help="mark answered customer mail read and answered (default: yes)",
    )
    mailbox.add_argument(
        "--mailbox-sent-folder", metavar="NAME", help="default: the \\Sent special-use folder"
    )
    mailbox.add_argument(
        "--mailbox-drafts-folder", metavar="NAME", help="default: the \\Drafts special-use folder"
    )
    group.add_argument(
        "--low-credits-at",
        type=int,
        metavar="N",
        help="warn the store's people when its credits fall below N (default: 10)",
    )
    if creating:
        group.add_argument("--credits", type=int, help="initial credits (default: 0)")

    secrets = parser.add_argument_group(
        "secrets (never on the command line)",
        "Read from STORE_IMAP_PASSWORD, STORE_SMTP_PASSWORD and STORE_SHOPIFY_TOKEN, from the "
        "variable named with --*-env, or prompted for."
        + ("" if creating else " Only the secrets asked for are rotated."),
    )
    for secret in SECRETS:
        secrets.add_argument(
            f"--{secret.flag}-env",
            dest=f"{secret.key}_env",
            metavar="NAME",
            help=f"read the {secret.label} from environment variable NAME",
        )
        if not creating:
            secrets.add_argument(
                f"--rotate-{secret.flag}",
                dest=f"rotate_{secret.key}",
                action="store_true",
                help=f"replace the {secret.label} (from {secret.env} or a prompt)",
            )
        secrets.add_argument(
            f"--{secret.flag}", nargs="?", action=_RefuseSecretValue, help=argparse.SUPPRESS
        )


SETTING_KEYS = (
    "name",
    "support_email",
    "extra_addresses",
    "imap_host",
    "imap_port",
    "imap_user",
    "imap_tls",
    "imap_folder",
    "smtp_host",
    "smtp_port",
    "smtp_user",
    "smtp_tls",
    "shopify_domain",
    "reply_language",
    "reply_tone",
    "reply_signature",
    "reply_mode",
    "mailbox_sent",
    "mailbox_drafts",
    "mailbox_mark_answered",
    "mailbox_sent_folder",
    "mailbox_drafts_folder",
    "owner_id",
    "credits",
    "low_credits_at",
)


def build_parser() -> argparse.ArgumentParser:
    """The `stores` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m worker stores",
        description="Add, inspect, update and check stores.",
        epilog="Exit codes: 0 ok, 1 failed, 2 usage error or invalid settings.",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, allow_abbrev=False)

    add = command("add", "create a store; its secrets go straight into Vault")
    _add_setting_flags(add, creating=True)

    listing = command("list", "list the active stores (--all: inactive ones too)")
    listing.add_argument("--all", action="store_true", help="include inactive stores")
    listing.add_argument("--json", action="store_true")

    show = command("show", "one store's settings (secrets shown only as set / not set)")
    show.add_argument("store_id", type=_store_id, metavar="STORE_ID")
    show.add_argument("--json", action="store_true")

    update = command("update", "change settings and rotate secrets")
    update.add_argument("store_id", type=_store_id, metavar="STORE_ID")
    _add_setting_flags(update, creating=False)

    credits = command("credits", "add credits (a negative amount, after --, corrects)")
    credits.add_argument("store_id", type=_store_id, metavar="STORE_ID")
    credits.add_argument("amount", type=int, metavar="AMOUNT", help="e.g. +100")
    credits.add_argument("--reason", choices=CREDIT_REASONS, default=None)

    for name, text in (("activate", "resume fetching and answering"), ("deactivate", "pause")):
        toggle = command(name, f"{text} for a store")
        toggle.add_argument("store_id", type=_store_id, metavar="STORE_ID")

    check = command("check", "try the IMAP and SMTP logins and the Shopify token")
    check.add_argument("store_id", type=_store_id, metavar="STORE_ID")

    notify = command(
        "notify",
        "who is told when something needs a person, how often, and the webhook (no option: show)",
    )
    notify.add_argument("store_id", type=_store_id, metavar="STORE_ID")
    recipients = notify.add_mutually_exclusive_group()
    recipients.add_argument(
        "--addresses", metavar="A,B", help="comma-separated emails the digest goes to"
    )
    recipients.add_argument(
        "--default-addresses",
        action="store_true",
        help="the store's people (console members), else its support address",
    )
    notify.add_argument(
        "--interval-minutes", type=int, metavar="N", help="at most one digest per N"
    )
    notify.add_argument(
        "--wait-seconds", type=int, metavar="N", help="gather a burst this long before sending"
    )
    hook = notify.add_mutually_exclusive_group()
    hook.add_argument(
        "--webhook",
        action="store_true",
        help=f"set the webhook URL from {WEBHOOK_SECRET.env} or a prompt (kept in Vault)",
    )
    hook.add_argument("--webhook-env", metavar="NAME", help="read the URL from this variable")
    hook.add_argument("--no-webhook", action="store_true", help="remove the webhook")
    hook.add_argument("--webhook-url", nargs="?", action=_RefuseSecretValue, help=argparse.SUPPRESS)
    notify.add_argument("--json", action="store_true")

    members = command("members", "the people of a store (console sign-in)")
    members_sub = members.add_subparsers(dest="members_command", required=True, metavar="ACTION")
    member_add = members_sub.add_parser(
        "add", help="link a person (by email) as owner or agent", allow_abbrev=False
    )
    member_add.add_argument("store_id", type=_store_id, metavar="STORE_ID")
    member_add.add_argument("--email", required=True)
    member_add.add_argument("--role", choices=("owner", "agent"), required=True)
    knowledge_cli.add_parser(sub, _store_id)
    return parser


# -- commands -----------------------------------------------------------------------------------


def _say(*parts: object) -> None:
    print(*parts, file=sys.stderr)


def _given_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key) for key in SETTING_KEYS if getattr(args, key, None) is not None}


def settings_problems(
    db: Database, settings: Mapping[str, Any], store_id: str | None = None
) -> list[str]:
    """Every problem the database finds with a new store's settings, or with changes to one."""
    return db.validate_store_settings(settings, store_id)


def _require_valid(db: Database, settings: Mapping[str, Any], store_id: str | None = None) -> None:
    problems = settings_problems(db, settings, store_id)
    if problems:
        raise UsageError("invalid store settings:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class Context:
    """What a command needs: the database (opened on first use), settings and secrets."""

    open_database: Callable[[], Database]
    settings: Settings
    secrets: SecretSource
    _db: Database | None = None

    @property
    def db(self) -> Database:
        """The worker.db.Database, connected on first use."""
        if self._db is None:
            self._db = self.open_database()
        return self._db

    def close(self) -> None:
        """Close the database if it was opened."""
        if self._db is not None:
            self._db.close()


def cmd_add(ctx: Context, args: argparse.Namespace) -> int:
    """Validate, read the secrets, create the store; prints its id."""
    store = new_store_settings(normalise_settings(_given_settings(args)))
    _require_valid(ctx.db, store)
    if args.shopify_token_env and not store.get("shopify_domain"):
        raise UsageError("--shopify-token-env needs --shopify-domain")
    secrets = {
        "imap_password": ctx.secrets.read(SECRETS[0], args.imap_password_env),
        "smtp_password": ctx.secrets.read(SECRETS[1], args.smtp_password_env),
    }
    if store.get("shopify_domain"):
        secrets["shopify_token"] = ctx.secrets.read(SECRETS[2], args.shopify_token_env)
    store_id = ctx.db.admin_create_store(store, secrets)
    print(store_id)
    _say(f"created store {store_id} ({store['name']}); secrets stored in Vault")
    return EXIT_OK


def _get_store(ctx: Context, store_id: str) -> dict[str, Any]:
    store = ctx.db.get_store(store_id)
    if store is None:
        raise LookupError(f"{store_id}: no such store")
    return dict(store)


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    """Print the active stores, or every store with --all."""
    stores = ctx.db.list_stores(include_inactive=args.all)
    if args.json:
        print(dumps([public_view(s) for s in stores]))
    elif stores:
        print(store_table(stores))
    else:
        _say("no stores" if args.all else "no active stores")
    return EXIT_OK


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    """Print one store."""
    store = _get_store(ctx, args.store_id)
    print(dumps(public_view(store)) if args.json else store_details(store))
    return EXIT_OK


def cmd_update(ctx: Context, args: argparse.Namespace) -> int:
    """Validate the changes against the stored row, read the secrets asked for, apply both."""
    changes = normalise_settings(_given_settings(args))
    current = _get_store(ctx, args.store_id)
    merged = {**current, **changes}
    _require_valid(ctx.db, changes, args.store_id)
    secrets: dict[str, str] = {}
    for secret in SECRETS:
        env_name = getattr(args, f"{secret.key}_env")
        if env_name or getattr(args, f"rotate_{secret.key}"):
            secrets[secret.key] = ctx.secrets.read(secret, env_name)
    if (
        merged.get("shopify_domain")
        and current.get("shopify_token_secret_id") is None
        and "shopify_token" not in secrets
    ):
        # A new Shopify connection is useless without its token: ask for it now.
        secrets["shopify_token"] = ctx.secrets.read(SECRETS[2], None)
    if not changes and not secrets:
        raise UsageError("nothing to update: give a setting or a secret to rotate")
    ctx.db.admin_update_store(args.store_id, changes, secrets)
    done = [*changes, *(f"{key} (rotated)" for key in secrets)]
    _say(f"updated store {args.store_id}: {', '.join(done)}")
    return EXIT_OK


def cmd_credits(ctx: Context, args: argparse.Namespace) -> int:
    """Top up (or correct) a store's credits; prints the new balance."""
    if args.amount == 0:
        raise UsageError("the amount must not be zero")
    reason = args.reason or ("topup" if args.amount > 0 else "adjustment")
    balance = ctx.db.admin_add_credits(args.store_id, args.amount, reason)
    print(balance)
    _say(f"store {args.store_id}: {args.amount:+d} credits ({reason}), balance {balance}")
    return EXIT_OK


def cmd_toggle(ctx: Context, args: argparse.Namespace) -> int:
    """Activate or deactivate a store."""
    active = args.command == "activate"
    ctx.db.admin_update_store(args.store_id, {"active": active}, {})
    _say(f"store {args.store_id} {'activated' if active else 'deactivated'}")
    return EXIT_OK


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one connectivity check: ok, failed or skipped, with a reason."""

    service: str
    status: str
    detail: str


def check_imap(store: Mapping[str, Any], password: str | None, settings: Settings) -> CheckResult:
    """Log in over IMAP and open the store's folder read-only."""
    from worker import imap

    if not password:
        return CheckResult("imap", "failed", "no IMAP password in Vault")
    try:
        account = MailAccount.imap(store, password)
        with imap.open_mailbox(
            account.host,
            account.port,
            account.tls,
            account.user,
            account.password,
            timeout_seconds=settings.imap_timeout_seconds,
            ca_file=settings.extra_ca_file,
        ) as client:
            folder = store.get("imap_folder") or "INBOX"
            try:
                selected = client.select_folder(folder, readonly=True)
            except Exception as exc:  # logged in, but the folder is the problem
                return CheckResult("imap", "failed", f"cannot open folder {folder!r}: {exc}")
            count = selected.get(b"EXISTS", 0)
    except Exception as exc:  # a check reports every failure instead of crashing on it
        return CheckResult("imap", "failed", str(exc) or type(exc).__name__)
    return CheckResult(
        "imap", "ok", f"logged in as {store['imap_user']}; {folder} has {count} message(s)"
    )


def check_smtp(store: Mapping[str, Any], password: str | None, settings: Settings) -> CheckResult:
    """Connect, negotiate TLS and authenticate over SMTP, sending nothing."""
    from worker import smtp_check

    if not password:
        return CheckResult("smtp", "failed", "no SMTP password in Vault")
    try:
        account = MailAccount.smtp(store, password)
        smtp_check.check_login(
            account.host,
            account.port,
            account.tls,
            account.user,
            account.password,
            timeout_seconds=settings.smtp_timeout_seconds,
            ca_file=settings.extra_ca_file,
        )
    except Exception as exc:  # a check reports every failure instead of crashing on it
        return CheckResult("smtp", "failed", str(exc) or type(exc).__name__)
    return CheckResult("smtp", "ok", f"logged in as {store['smtp_user']}")


def check_shopify(store: Mapping[str, Any], token: str | None, settings: Settings) -> CheckResult:
    """Ask the shop for its name and the token's scopes; a missing scope fails the check."""
    domain = store.get("shopify_domain")
    if not domain:
        return CheckResult("shopify", "skipped", "no Shopify domain configured")
    if not token:
        return CheckResult("shopify", "failed", "no Shopify token in Vault")
    import httpx

    from worker.shopify import ShopifyClient, missing_scopes

    try:
        with httpx.Client() as http:
            name, scopes = ShopifyClient(
                http, domain, token, settings.shopify_api_version, settings.shopify_base_url
            ).shop_check()
    except Exception as exc:  # a check reports every failure instead of crashing on it
        return CheckResult("shopify", "failed", str(exc) or type(exc).__name__)
    accepted = f"token accepted by {domain} (shop {name!r})"
    missing = missing_scopes(scopes)
    if missing:
        # Order questions need read_orders, product questions read_products; without them the
        # lookups are refused and those emails end in the dead-letter queue.
        return CheckResult(
            "shopify", "failed", f"{accepted} but it lacks the scopes {', '.join(missing)}"
        )
    return CheckResult("shopify", "ok", f"{accepted}; scopes {', '.join(scopes)}")


def cmd_check(ctx: Context, args: argparse.Namespace) -> int:
    """Try each service with the stored settings and secrets; 1 when any failed."""
    store = _get_store(ctx, args.store_id)
    secrets = ctx.db.get_store_secrets(args.store_id) or {}
    results = [
        check_imap(store, secrets.get("imap_password"), ctx.settings),
        check_smtp(store, secrets.get("smtp_password"), ctx.settings),
        check_shopify(store, secrets.get("shopify_token"), ctx.settings),
    ]
    if not store.get("active", True):
        _say(f"note: store {args.store_id} is inactive")
    width = max(len(r.service) for r in results)
    for r in results:
        print(f"{r.service.ljust(width)}  {r.status.ljust(7)}  {r.detail}")
    return EXIT_FAILED if any(r.status == "failed" for r in results) else EXIT_OK


def cmd_members(ctx: Context, args: argparse.Namespace) -> int:
    """Link a person (created with `python -m worker users add`) to a store."""
    result = ctx.db.add_store_member(args.store_id, args.email, args.role)
    print(json.dumps(result))
    return EXIT_OK


def notification_details(view: Mapping[str, Any]) -> str:
    """A store's notification settings as `stores notify` prints them (the webhook by hint)."""
    recipients = ", ".join(view.get("recipients") or [])
    source = "configured" if view.get("addresses") else "default: the store's people, else support"
    hook = f"{view['webhook_hint']} (URL in Vault)" if view.get("webhook") else "not set"
    rows = [
        ("recipients", f"{recipients} ({source})"),
        (
            "digest",
            f"at most every {view['digest_interval_minutes']} min, "
            f"after a {view['digest_wait_seconds']} s wait",
        ),
        ("webhook", hook),
    ]
    return "\n".join(f"{key.ljust(10)}  {value}" for key, value in rows)


def cmd_notify(ctx: Context, args: argparse.Namespace) -> int:
    """Show or change a store's notification settings; the webhook URL goes into Vault."""
    changes: dict[str, Any] = {}
    if args.addresses is not None:
        addresses = [a.strip() for a in args.addresses.split(",") if a.strip()]
        if not addresses:
            raise UsageError("--addresses needs at least one address (or --default-addresses)")
        changes["addresses"] = addresses
    if args.default_addresses:
        changes["addresses"] = None
    if args.interval_minutes is not None:
        changes["digest_interval_minutes"] = args.interval_minutes
    if args.wait_seconds is not None:
        changes["digest_wait_seconds"] = args.wait_seconds
    if args.no_webhook:
        changes["webhook_url"] = None
    elif args.webhook or args.webhook_env:
        changes["webhook_url"] = ctx.secrets.read(WEBHOOK_SECRET, args.webhook_env)
    if changes:
        view = ctx.db.admin_set_notification_settings(args.store_id, changes)
        _say(f"updated the notifications of store {args.store_id}: {', '.join(changes)}")
    else:
        found = ctx.db.notification_settings_view(args.store_id)
        if found is None:
            raise LookupError(f"{args.store_id}: no such store")
        view = found
    print(dumps(view) if args.json else notification_details(view))
    return EXIT_OK


COMMANDS: dict[str, Callable[[Context, argparse.Namespace], int]] = {
    "add": cmd_add,
    "list": cmd_list,
    "show": cmd_show,
    "update": cmd_update,
    "credits": cmd_credits,
    "activate": cmd_toggle,
    "deactivate": cmd_toggle,
    "check": cmd_check,
    "members": cmd_members,
    "knowledge": knowledge_cli.run,
    "notify": cmd_notify,
}


def _interactive_prompt() -> Callable[[str], str] | None:
    return getpass.getpass if sys.stdin is not None and sys.stdin.isatty() else None


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    prompt: Callable[[str], str] | None = None,
) -> int:
    """Entry point; returns the exit code. `prompt` replaces getpass (default: only on a tty)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's usage errors and --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    env = os.environ if environ is None else environ
    ctx: Context | None = None
    try:
        settings = load_settings(env, require_worker_secret=False)
        ctx = Context(
            open_database=lambda: connect(settings, min_size=1, max_size=1),
            settings=settings,
            secrets=SecretSource(env, prompt or _interactive_prompt()),
        )
        return COMMANDS[args.command](ctx, args)
    except (UsageError, ConfigError, knowledge_cli.KnowledgeFileError) as exc:
        _say(f"stores {args.command}: {exc}")
        return EXIT_USAGE
    except LookupError as exc:
        _say(f"stores {args.command}: {exc.args[0]}")
        return EXIT_FAILED
    except DatabaseConstraintError as exc:
        _say(f"stores {args.command}: {exc}")
        if exc.code == NO_DATA_FOUND:
            return EXIT_FAILED
        return EXIT_USAGE if exc.code in (INVALID_PARAMETER, BAD_VALUE) else EXIT_FAILED
    except WorkerError as exc:
        _say(f"stores {args.command}: {exc}")
        return EXIT_FAILED
    except (KeyboardInterrupt, EOFError):
        _say(f"stores {args.command}: interrupted; nothing saved")
        return EXIT_FAILED
    finally:
        if ctx is not None:
            ctx.close()
