"""The local demo after set-up (started by scripts/demo, which prepared Postgres and the venv).

Starts the stack (stack.py: Dovecot, an SMTP sink, the fake Shopify, the worker under gunicorn),
plays the scenario (scenario.py: the demo store, its mailbox, pg_cron's kick, waiting for every
email to settle) and prints the report (report.py). Then keeps running (pg_cron keeps polling)
until Ctrl-C, or exits at once with --once (or CI=true). Everything started here is stopped on
exit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import report
from scenario import Scenario
from stack import DemoError, Stack, say, stop_cluster


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_as_keyboard() -> Iterator[None]:
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def play(stack: Stack, scenario: Scenario, *, once: bool) -> None:
    """Start the stack, play the scenario, print the report; then keep running unless once."""
    say(f"Demo working directory (logs): {stack.workdir}")
    stack.start_mail()
    stack.start_shopify()
    stack.start_auth()
    stack.start_webhook()
    stack.start_worker()
    scenario.create_store()
    scenario.create_console_people()
    scenario.configure_notifications()
    scenario.fill_mailbox()
    scenario.wait_for_scheduler()
    scenario.set_vault_secrets()
    scenario.kick_fetch(first=True)
    rows = scenario.wait_until_settled()
    scenario.wait_for_digest()
    inputs = scenario.report_inputs(rows)
    for line in report.report_lines(inputs):
        say(line)
    data = report.report_data(inputs)
    if once:
        say()
        scenario.wait_for_scheduled_run()
        data["scheduled_http_statuses"] = scenario.scheduled_answers
    out = os.environ.get("DEMO_REPORT_JSON")
    if out:
        Path(out).write_text(report.to_json(data))
    if not once:
        scenario.keep_running({str(r["id"]) for r in rows})


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
    stack = Stack(database_url, workdir)
    scenario = Scenario(stack)
    status = 0
    with interrupts_as_keyboard():
        try:
            with stack.exits:
                play(stack, scenario, once=once)
        except KeyboardInterrupt:
            say("\n==> stopping (Ctrl-C)")
        except DemoError as exc:
            say(f"\nDEMO FAILED: {exc}\n")
            say(scenario.diagnostics())
            status = 1
        except Exception:
            say(f"\nDEMO FAILED unexpectedly:\n{traceback.format_exc()}")
            say(scenario.diagnostics())
            status = 1
        finally:
            stop_cluster()
    say(f"==> stopped everything the demo started; logs kept in {workdir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
