"""Fetching as jobs: one fetch_mailbox job per store, claimed by any worker (decision 0021).

The fetch cron (/fetch-emails) calls `run_fetch`: `enqueue_fetch_jobs` gives every active store
one live fetch job (never two; SQL decides), then this machine claims fetch jobs through the
runner within the run's budget, FETCH_CONCURRENCY at a time. Every process run also claims them
in a lane of its own (worker/queue/lanes.py), so with several machines the mailboxes are read by
all of them. `FetchHandler` runs one job: `worker.fetch.fetch_store` for the job's store, then
`finish_fetch_job`, which completes it and, when the mailbox still holds mail beyond the per-job
bound (FETCH_MAX_PER_STORE), enqueues the store's next fetch at once: a backlog is drained in
bounded pieces that other stores' jobs interleave with.

A failing store's job is retried on its own policy (30 s doubling, capped at 4 minutes; an open
breaker defers it) while the others run; the UID only ever moves in `ingest_messages`, so a worker
killed mid-fetch loses nothing: its lease expires and another worker reads from the stored UID.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from worker import imap, parse_pool, tls
from worker.db import Database
from worker.errors import ConfigError, PermanentError, TransientError, WorkerError
from worker.fetch import (
    FetchOptions,
    FetchStopped,
    MailboxOpener,
    Parse,
    StoreOutcome,
    fetch_store,
    imap_service,
    pool_parser,
)
from worker.queue.breakers import Breakers
from worker.queue.handlers import Handlers, JobRun
from worker.queue.lanes import Lane
from worker.queue.outcome import Complete, Outcome, Settled
from worker.queue.runner import RunnerOptions, Slots, run_queue
from worker.queue.trace import finish
from worker.runs import Budget

log = logging.getLogger(__name__)

JOB_TYPE = "fetch_mailbox"


class StoreFetchFailed(TransientError):
    """The store's mailbox could not be read this time; retried on the fetch policy."""


class StoreFetchRefused(PermanentError):
    """The store's mailbox refused us (e.g. a wrong password): dead-lettered, visible to an
    operator; the next interval enqueues a fresh job, and the breaker stops the attempts."""


def failure(outcome: StoreOutcome) -> WorkerError:
    """The error a failed store's job is settled with (fetch_store recorded the event)."""
    message = f"fetch failed: {outcome.error}"
    if outcome.status == "stopped":
        return FetchStopped(message, service=imap.SERVICE)
    if outcome.error_type == "permanent":
        return StoreFetchRefused(message, service=imap.SERVICE)
    return StoreFetchFailed(message, service=imap.SERVICE)


def is_idle(outcome: StoreOutcome) -> bool:
    """A fetch that found nothing to do: its job is not kept (finish_fetch_job deletes it)."""
    return (
        outcome.status == "ok"
        and outcome.fetched == 0
        and outcome.left_alone == 0
        and not outcome.uidvalidity_changed
        and not outcome.has_more
    )


def job_summary(run: JobRun, outcome: StoreOutcome) -> dict[str, Any]:
    """What a fetch job's row keeps as its result."""
    return finish(
        run.trace,
        outcome.status,
        fetched=outcome.fetched,
        stored=outcome.stored,
        duplicates=outcome.duplicates,
        skipped=outcome.skipped,
        own_copies=outcome.own_copies,
        left_alone=outcome.left_alone,
        uidvalidity_changed=outcome.uidvalidity_changed or None,
        more=outcome.has_more or outcome.status == "partial",
        jobs_enqueued=len(outcome.job_ids),
        error=outcome.error,
    )


class FetchHandler:
    """Runs fetch_mailbox jobs: one store's mailbox per job. One instance per run: it keeps the
    outcomes of the stores it fetched for the run's summary."""

    def __init__(
        self,
        db: Database,
        options: FetchOptions,
        *,
        open_mailbox: MailboxOpener = imap.open_mailbox,
        budget: Budget | None = None,
        parse: Parse | None = None,
    ) -> None:
        self.db = db
        self.options = options
        self.open_mailbox = open_mailbox
        # The run's budget: its stop event (shutdown) cuts a store's connection at once. Its
        # deadline does not: a job claimed just before it runs to the store's own time limit,
        # since a fetch cut short would count against the store (an attempt, its breaker).
        self.budget = budget
        self.parse = parse
        self._lock = threading.Lock()
        self.outcomes: list[StoreOutcome] = []

    def handle(self, run: JobRun) -> Outcome:
        """Fetch the job's store; complete it (with a follow-up when mail is waiting) or raise."""
        store_id = str(run.job.get("store_id") or "")
        store = self.db.get_store(store_id) if store_id else None
        if store is None or not store.get("active"):
            # Deactivated (or deleted) after the tick: nothing to read, nothing to retry.
            return Complete(finish(run.trace, "store_inactive"))
        parse = self.parse or pool_parser(parse_pool.shared_pool(self.options.parse))
        deadline = time.monotonic() + self.options.store_timeout_seconds
        stop_event = self.budget.stop_event if self.budget is not None else None
        try:
            with run.trace.timed("fetch"):
                outcome = fetch_store(
                    self.db, store, self.open_mailbox, self.options, deadline, stop_event, parse
                )
        except ConfigError:
            raise  # the deployment's fault, the same for every store (fetch_store says why)
        except Exception as exc:
            # A bug in one store's path: recorded in the run's summary, retried like a failure.
            log.exception("unexpected error fetching store %s", store_id)
            error_type = exc.error_type if isinstance(exc, WorkerError) else "transient"
            with self._lock:
                self.outcomes.append(
                    StoreOutcome(store_id, status="failed", error=repr(exc), error_type=error_type)
                )
            raise
        with self._lock:
            self.outcomes.append(outcome)
        if outcome.status == "breaker_open":
            # Deferred until the breaker lets a call through; no attempt spent.
            raise Breakers(self.db).open_error(imap_service(store_id))
        if outcome.status in ("failed", "stopped"):
            raise failure(outcome)
        summary = job_summary(run, outcome)
        finished = self.db.finish_fetch_job(
            run.job_id, run.worker_id, summary, summary["more"], is_idle(outcome)
        )
        if finished.get("follow_up"):
            summary["follow_up"] = finished["follow_up"]
        return Settled(summary)

    def dead_lettered(self, job: Mapping[str, Any]) -> None:
        """Nothing to undo: a fetch stores mail only together with its UID (ingest_messages)."""


def fetch_handlers(handler: FetchHandler) -> Handlers:
    """The registry of a fetch lane: fetch_mailbox jobs only."""
    handlers = Handlers()
    handlers.register(JOB_TYPE, handler)
    return handlers


def runner_options(options: FetchOptions, slots: Slots | None = None) -> RunnerOptions:
    """A fetch lane's slots (FETCH_CONCURRENCY, shared with the process's other fetch runs
    through `slots`) and lease."""
    return RunnerOptions(
        concurrency=max(1, options.concurrency), lease_seconds=options.lease_seconds, slots=slots
    )


def fetch_lane(
    db: Database,
    options: FetchOptions,
    budget: Budget,
    *,
    open_mailbox: MailboxOpener = imap.open_mailbox,
    slots: Slots | None = None,
) -> Lane | None:
    """The lane of a process run that reads mailboxes (fetch jobs enqueued by any machine's
    tick); None when the CA bundle is unusable, which would fail every store alike (the fetch
    run says so; the email lane still runs)."""
    try:
        tls.client_ssl_context(options.ca_file)
    except ConfigError:
        log.exception("no fetch lane: the configured CA bundle is unusable")
        return None
    handler = FetchHandler(db, options, open_mailbox=open_mailbox, budget=budget)
    return Lane("fetch", fetch_handlers(handler), runner_options(options, slots))


def run_fetch(
    db: Database,
    budget: Budget,
    *,
    open_mailbox: MailboxOpener = imap.open_mailbox,
    options: FetchOptions | None = None,
    worker_id: str | None = None,
    slots: Slots | None = None,
) -> dict[str, Any]:
    """One fetch-emails run: a fetch job for every active store, then claim fetch jobs (these
    and any other due ones) until none is left or the budget is spent; the run summary.

    `slots` are the process's mailbox slots, shared with process runs' fetch lanes.
    """
    options = options or FetchOptions()
    # Fail the run before touching any store when the configured CA bundle is unusable.
    tls.client_ssl_context(options.ca_file)
    tick = db.enqueue_fetch_jobs()
    handler = FetchHandler(db, options, open_mailbox=open_mailbox, budget=budget)
    queue = run_queue(
        db,
        fetch_handlers(handler),
        budget,
        options=runner_options(options, slots),
        worker_id=worker_id,
    )
    summary = summarize(handler.outcomes, stores=int(tick.get("stores") or 0))
    summary.update(
        fetch_jobs_enqueued=int(tick.get("enqueued") or 0),
        fetch_jobs_rerun=int(tick.get("rerun") or 0),
        fetch_jobs=queue["processed"],
        fetch_jobs_outcomes=queue["outcomes"],
        worker_id=queue["worker_id"],
    )
    return summary


def summarize(outcomes: list[StoreOutcome], *, stores: int | None = None) -> dict[str, Any]:
    """The run summary: totals over the jobs run, and per store its last job's status.

    `stores` is how many stores the run was asked to fetch (the tick's active stores); those
    whose job this run did not get to (budget spent, a retry not yet due, another worker has it)
    count as not started.
    """
    last: dict[str, StoreOutcome] = {}
    for outcome in outcomes:
        last[outcome.store_id] = outcome
    finals = list(last.values())
    total = len(finals) if stores is None else max(stores, len(finals))
    return {
        "stores": total,
        "stores_ok": sum(o.status == "ok" for o in finals),
        "stores_partial": sum(o.status == "partial" for o in finals),
        "stores_failed": sum(o.status == "failed" for o in finals),
        "stores_breaker_open": sum(o.status == "breaker_open" for o in finals),
        "stores_not_started": total - len(finals)
        + sum(o.status == "not_started" for o in finals),
        "stores_stopped": sum(o.status == "stopped" for o in finals),
        "fetched": sum(o.fetched for o in outcomes),
        "stored": sum(o.stored for o in outcomes),
        "duplicates": sum(o.duplicates for o in outcomes),
        "own_copies": sum(o.own_copies for o in outcomes),
        "skipped": sum(o.skipped for o in outcomes),
        "left_alone": sum(o.left_alone for o in outcomes),
        "jobs_enqueued": sum(len(o.job_ids) for o in outcomes),
        "errors": [
            {"store_id": o.store_id, "error": o.error, "error_type": o.error_type}
            for o in outcomes
            if o.error
        ],
    }
