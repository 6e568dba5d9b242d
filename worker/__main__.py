"""Command line: `python -m worker fetch|process|serve|stores|dlq|users ...`.

`fetch` and `process` run one run in the foreground with the same code the HTTP triggers use and
print its record as JSON; SIGTERM or Ctrl-C makes the run stop claiming and end cleanly.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from worker import runs
from worker.app import (
    ServicesFactory,
    configure_logging,
    create_app,
    load_services,
    warn_about_settings,
)
from worker.config import load_settings
from worker.errors import ConfigError

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subcommand per action."""
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for kind, text in (
        ("fetch", "fetch new emails of every active store, once"),
        ("process", "process due queue jobs, once"),
    ):
        run = sub.add_parser(kind, help=text, description=text)
        run.add_argument(
            "--budget",
            type=float,
            default=None,
            metavar="SECONDS",
            help="time budget of the run (default: RUN_BUDGET_SECONDS)",
        )
    serve = sub.add_parser("serve", help="run the Flask development server (not for production)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default: PORT")
    doctor = sub.add_parser(
        "doctor",
        help="check this deployment's settings and say what to fix",
        description="check the database, Vault secrets, cron jobs and the worker URL",
    )
    doctor.add_argument(
        "--migrations",
        default=None,
        metavar="DIR",
        help="the migration files to compare with (default: supabase/migrations beside worker/)",
    )
    stores = sub.add_parser("stores", help="manage stores (see `stores --help`)", add_help=False)
    stores.add_argument("args", nargs=argparse.REMAINDER)
    dlq = sub.add_parser(
        "dlq", help="inspect and requeue dead-lettered jobs (see `dlq --help`)", add_help=False
    )
    dlq.add_argument("args", nargs=argparse.REMAINDER)
    users = sub.add_parser("users", help="console people (see `users --help`)", add_help=False)
    users.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def run_once(
    kind: str,
    *,
    budget_seconds: float,
    services_factory: ServicesFactory,
    environ: Mapping[str, str],
) -> int:
    """Run one `kind` run in the foreground, print its record as JSON, return the exit code."""
    settings = load_settings(environ, require_worker_secret=False)
    # Logs to stderr: stdout carries only the run record, so it can be piped to jq.
    configure_logging(settings.log_level, sys.stderr)
    warn_about_settings(settings)
    services = services_factory(settings)
    manager = runs.RunManager({kind: services.runners[kind]}, budget_seconds=budget_seconds)

    def stop(signum: int, frame: FrameType | None) -> None:
        manager.request_stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        record = manager.start(kind)
        assert record is not None  # a fresh manager has nothing running
        finished = manager.wait(record.id)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        close = getattr(services, "close", None)
        if callable(close):
            close()
    assert finished is not None
    print(json.dumps(finished.to_dict(), indent=2, default=str))
    return EXIT_OK if finished.status == "succeeded" else EXIT_RUN_FAILED


def main(
    argv: Sequence[str] | None = None,
    *,
    services_factory: ServicesFactory | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Entry point; returns the process exit code."""
    env = os.environ if environ is None else environ
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["users"]:
        users = importlib.import_module("worker.users")
        return int(users.main(words[1:], environ=environ))
    if words[:1] == ["stores"]:
        # Before argparse, whose REMAINDER would not take a leading option (`stores --help`).
        # Imported lazily: the store CLI is its own module with its own dependencies.
        stores = importlib.import_module("worker.stores")
        return int(stores.main(words[1:]))
    if words[:1] == ["dlq"]:
        # Same reason; the DLQ tool (worker/dlq_cli.py) is also scripts/requeue.py.
        dlq_cli = importlib.import_module("worker.dlq_cli")
        return int(dlq_cli.main(words[1:], environ=env))
    args = build_parser().parse_args(words)
    try:
        if args.command == "serve":
            settings = load_settings(env)
            app = create_app(settings, services_factory=services_factory)
            app.run(host=args.host, port=args.port or settings.port, threaded=True)
            return EXIT_OK
        if args.command == "doctor":
            from worker import db, doctor

            directory = args.migrations or doctor.default_migrations_dir()
            return doctor.main(load_settings(env), db.connect, Path(directory))
        budget = args.budget
        if budget is None:
            budget = load_settings(env, require_worker_secret=False).run_budget_seconds
        return run_once(
            args.command,
            budget_seconds=budget,
            services_factory=services_factory or load_services,
            environ=env,
        )
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
