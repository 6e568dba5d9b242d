#!/usr/bin/env python3
"""Inspect and recover the dead-letter queue (the same tool as `python -m worker dlq`).

  requeue.py list [--store ID] [--job-type T] [--error-type E] [--older-than 2h] [--json]
  requeue.py show JOB_ID [--json]
  requeue.py requeue JOB_ID... [--keep-attempts]
  requeue.py requeue --all [filters] [--yes] [--keep-attempts]
  requeue.py purge --older-than 7d [filters] [--yes]

Bulk actions are dry runs that list what they would touch until --yes is given. The database
comes from DATABASE_URL, or SUPABASE_URL + SUPABASE_SECRET_KEY (or the legacy service-role key).

Exit codes: 0 ok; 1 some ids were not in the dead-letter queue or an action failed; 2 usage or
configuration error; 3 nothing matched the filters.

The tool lives in the package (worker/dlq_cli.py), so it ships in the container image; this file
is the documented entry point on a checkout.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from worker import dlq_cli
from worker.db import Database


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    database: Database | None = None,
) -> int:
    """Entry point; returns the exit code. `database` replaces the one from the environment."""
    return dlq_cli.main(argv, environ=environ, database=database, prog="requeue.py")


if __name__ == "__main__":
    sys.exit(main())
