"""`python -m worker users add --email E [--operator]`: create a console person through the
Supabase Auth admin API (never by writing auth.users ourselves).

The password comes from CONSOLE_USER_PASSWORD or, on a terminal, a prompt. The admin key is
SUPABASE_SECRET_KEY (or SUPABASE_SERVICE_ROLE_KEY) when set; otherwise it is minted from
SUPABASE_JWT_SECRET, which is exactly what the platform's service_role key is.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from worker.config import load_settings
from worker.console.auth_client import AuthClient, admin_key
from worker.errors import ConfigError, WorkerError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
PASSWORD_ENV = "CONSOLE_USER_PASSWORD"  # noqa: S105  (the variable's name, not a password)


def build_parser() -> argparse.ArgumentParser:
    """The `users` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m worker users",
        description="Create people who sign in to the console.",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = sub.add_parser("add", help="create a person (confirmed email, password sign-in)")
    add.add_argument("--email", required=True)
    add.add_argument("--operator", action="store_true",
                     help="an operator of the deployment (sees every store)")
    return parser


def _password(env: Mapping[str, str], prompt: Callable[[str], str] | None) -> str:
    value = env.get(PASSWORD_ENV, "")
    if value:
        return value
    if prompt is None:
        raise ConfigError([f"{PASSWORD_ENV} is not set and there is no terminal to ask on"])
    first = prompt("Password: ")
    if first != prompt("Password again: "):
        raise ConfigError(["the two passwords differ"])
    return first


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    prompt: Callable[[str], str] | None = None,
) -> int:
    """Entry point; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    env = os.environ if environ is None else environ
    interactive = getpass.getpass if sys.stdin is not None and sys.stdin.isatty() else None
    try:
        settings = load_settings(env, require_worker_secret=False)
        if not settings.console_enabled:
            raise ConfigError(
                ["set SUPABASE_AUTH_URL (or SUPABASE_URL), SUPABASE_ANON_KEY and "
                 "SUPABASE_JWT_SECRET to manage console people"]
            )
        password = _password(env, prompt or interactive)
        auth = AuthClient(str(settings.supabase_auth_url), str(settings.supabase_anon_key))
        try:
            user_id = auth.create_user(admin_key(settings), args.email, password,
                                       operator=args.operator)
        finally:
            auth.close()
    except ConfigError as exc:
        print(f"users {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WorkerError as exc:
        print(f"users {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps({"user_id": user_id, "email": args.email.lower(),
                      "operator": args.operator}))
    return EXIT_OK
