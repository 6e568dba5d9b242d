"""The dead-letter-queue tool: `python -m worker dlq list|show|requeue|purge` (also
scripts/requeue.py, the documented entry point).

  list [--store ID] [--job-type T] [--error-type E] [--older-than 2h] [--json]
  show JOB_ID [--json]
  requeue JOB_ID... [--keep-attempts]
  requeue --all [filters] [--yes] [--keep-attempts]
  purge --older-than 7d [filters] [--yes]

Bulk actions are dry runs that list what they would touch until --yes is given. The database
comes from DATABASE_URL, or SUPABASE_URL + SUPABASE_SECRET_KEY. Parsing operator input and
formatting jobs is pure and lives in worker/dlq.py; this module is the command line around it.

Exit codes: 0 ok; 1 some ids were not in the dead-letter queue or an action failed; 2 usage or
configuration error; 3 nothing matched the filters.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from worker import dlq
from worker.config import load_settings
from worker.db import Database, Row, connect
from worker.errors import ConfigError, WorkerError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_MATCH = 3

LIST_LIMIT = 100  # jobs `list` shows by default
BULK_LIMIT = 1000  # jobs one bulk requeue/purge selects; run again for more
PURGE_CHUNK = 500  # ids per purge_dead_letter_jobs call, so one statement stays small
PROG = "python -m worker dlq"


class UsageError(Exception):
    """A command line that argparse accepts but that makes no sense (exit 2)."""


def _uuid_arg(text: str) -> str:
    try:
        return dlq.parse_job_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration_arg(text: str) -> int:
    try:
        return dlq.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _add_filters(parser: argparse.ArgumentParser, *, age_required: bool = False) -> None:
    group = parser.add_argument_group("filters")
    group.add_argument("--store", type=_uuid_arg, metavar="STORE_ID", help="only this store")
    group.add_argument("--job-type", metavar="TYPE", help="only this job type")
    group.add_argument(
        "--error-type", choices=("transient", "permanent"), help="only this error type"
    )
    group.add_argument(
        "--older-than",
        type=_duration_arg,
        required=age_required,
        metavar="AGE",
        help="dead-lettered at least this long ago, e.g. 30m, 2h, 7d",
    )


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The argument parser; argparse's own errors exit with 2 (usage)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Inspect and recover the dead-letter queue.",
        epilog="Exit codes: 0 ok, 1 not in the DLQ or failed, 2 usage, 3 no matches.",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = sub.add_parser(
        "list", help="list dead-lettered jobs, newest first", allow_abbrev=False
    )
    _add_filters(listing)
    listing.add_argument("--limit", type=_positive_int, default=LIST_LIMIT)
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")

    show = sub.add_parser("show", help="one job with its error history", allow_abbrev=False)
    show.add_argument("job_id", type=_uuid_arg, metavar="JOB_ID")
    show.add_argument("--json", action="store_true", help="JSON instead of text")

    requeue = sub.add_parser(
        "requeue", help="move dead-lettered jobs back to pending", allow_abbrev=False
    )
    requeue.add_argument("job_ids", nargs="*", type=_uuid_arg, metavar="JOB_ID")
    requeue.add_argument(
        "--all", action="store_true", help="every job matching the filters (dry run unless --yes)"
    )
    _add_filters(requeue)
    requeue.add_argument("--limit", type=_positive_int, default=BULK_LIMIT)
    requeue.add_argument("--yes", action="store_true", help="act, instead of a dry run")
    requeue.add_argument(
        "--keep-attempts",
        action="store_true",
        help="keep attempt_count (default: reset to 0, so the job gets its full retries)",
    )

    purge = sub.add_parser(
        "purge", help="delete old dead-lettered jobs (events stay)", allow_abbrev=False
    )
    _add_filters(purge, age_required=True)
    purge.add_argument("--limit", type=_positive_int, default=BULK_LIMIT)
    purge.add_argument("--yes", action="store_true", help="act, instead of a dry run")
    return parser


def _say(*parts: object) -> None:
    print(*parts, file=sys.stderr)


def _select(db: Database, args: argparse.Namespace) -> list[Row]:
    return db.list_dead_letter_jobs(
        store_id=args.store,
        job_type=args.job_type,
        error_type=args.error_type,
        min_age_seconds=args.older_than,
        limit=args.limit,
    )


def _no_match() -> int:
    _say("no dead-letter jobs match")
    return EXIT_NO_MATCH


def _note_limit(jobs: Sequence[Row], limit: int) -> None:
    if len(jobs) >= limit:
        _say(f"note: stopped at --limit {limit}; more jobs may match (run again for the rest)")


def cmd_list(db: Database, args: argparse.Namespace, now: datetime) -> int:
    """Print the matching dead-lettered jobs."""
    jobs = _select(db, args)
    if args.json:
        print(dlq.dumps([dlq.job_json(job, now) for job in jobs]))
    elif jobs:
        print(dlq.job_table(jobs, now))
    if not jobs:
        return _no_match()
    _note_limit(jobs, args.limit)
    return EXIT_OK


def cmd_show(db: Database, args: argparse.Namespace, now: datetime) -> int:
    """Print one job (any status) with its events."""
    job = db.get_job(args.job_id)
    if job is None:
        _say(f"{args.job_id}: no such job")
        return EXIT_FAILED
    events = db.get_job_events(args.job_id)
    if args.json:
        print(dlq.dumps({"job": dlq.job_json(job, now), "events": events}))
    else:
        print(dlq.job_details(job, events, now))
    return EXIT_OK


def _why_not_requeued(db: Database, job_id: str) -> str:
    job = db.get_job(job_id)
    if job is None:
        return f"{job_id}: no such job"
    if job.get("status") == "dead_letter" and job.get("job_type") == "fetch_mailbox":
        return f"{job_id}: its store already has a fetch job waiting or running (same mailbox)"
    return f"{job_id}: not in the dead-letter queue (status {job.get('status')})"


def cmd_requeue(db: Database, args: argparse.Namespace, now: datetime) -> int:
    """Requeue the given ids at once, or the filtered selection after a dry run."""
    filtered = any(
        value is not None for value in (args.store, args.job_type, args.error_type, args.older_than)
    )
    if args.all == bool(args.job_ids):
        raise UsageError("give job ids, or --all (with optional filters), not both or neither")
    if args.job_ids and filtered:
        raise UsageError("filters apply to --all only")
    if args.job_ids and args.yes:
        raise UsageError("--yes is for --all; explicit ids are requeued at once")
    reset = not args.keep_attempts

    if args.job_ids:
        failed = 0
        for job_id in dict.fromkeys(args.job_ids):
            if db.requeue_dlq_job(job_id, reset_attempts=reset):
                print(f"requeued {job_id}")
            else:
                _say(_why_not_requeued(db, job_id))
                failed += 1
        return EXIT_FAILED if failed else EXIT_OK

    jobs = _select(db, args)
    if not jobs:
        return _no_match()
    if not args.yes:
        print(dlq.job_table(jobs, now))
        _note_limit(jobs, args.limit)
        _say(f"dry run: {len(jobs)} job(s) would be requeued; add --yes to requeue them")
        return EXIT_OK
    _note_limit(jobs, args.limit)
    done = 0
    for job in jobs:
        job_id = str(job["id"])
        if db.requeue_dlq_job(job_id, reset_attempts=reset):
            print(f"requeued {job_id}")
            done += 1
        else:
            # Someone else requeued or purged it between the listing and now.
            _say(_why_not_requeued(db, job_id))
    _say(f"requeued {done} of {len(jobs)} job(s)")
    return EXIT_OK if done == len(jobs) else EXIT_FAILED


def cmd_purge(db: Database, args: argparse.Namespace, now: datetime) -> int:
    """Delete the filtered dead-lettered jobs after a dry run; their events stay."""
    jobs = _select(db, args)
    if not jobs:
        return _no_match()
    if not args.yes:
        print(dlq.job_table(jobs, now))
        _note_limit(jobs, args.limit)
        _say(f"dry run: {len(jobs)} job(s) would be purged; add --yes to delete them")
        return EXIT_OK
    _note_limit(jobs, args.limit)
    ids = [str(job["id"]) for job in jobs]
    purged = 0
    for start in range(0, len(ids), PURGE_CHUNK):
        purged += db.purge_dead_letter_jobs(ids[start : start + PURGE_CHUNK])
    _say(f"purged {purged} of {len(ids)} job(s)")
    return EXIT_OK if purged == len(ids) else EXIT_FAILED


COMMANDS: dict[str, Callable[[Database, argparse.Namespace, datetime], int]] = {
    "list": cmd_list,
    "show": cmd_show,
    "requeue": cmd_requeue,
    "purge": cmd_purge,
}


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    database: Database | None = None,
    prog: str = PROG,
) -> int:
    """Entry point; returns the exit code. `database` replaces the one from the environment."""
    try:
        args = build_parser(prog).parse_args(argv)
    except SystemExit as exc:  # argparse's usage errors (2) and --help (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    db: Database | None = database
    try:
        if db is None:
            settings = load_settings(
                os.environ if environ is None else environ, require_worker_secret=False
            )
            # One call at a time: a pool of one connection is plenty.
            db = connect(settings, min_size=1, max_size=1)
        return COMMANDS[args.command](db, args, datetime.now(UTC))
    except UsageError as exc:
        _say(f"{prog} {args.command}: error: {exc}")
        return EXIT_USAGE
    except ConfigError as exc:
        _say(exc)
        return EXIT_USAGE
    except WorkerError as exc:
        _say(f"error: {exc}")
        return EXIT_FAILED
    finally:
        if db is not None and database is None:
            db.close()
