"""A process-queue run: claim due jobs of the registered types, run their handlers, settle them.

A run claims jobs in batches sized to the free slots of a thread pool, runs them concurrently,
renews their leases while they run and stops claiming when its budget is spent. Each job is
settled once (complete, fail or defer) from what its handler returned or raised. A job that
cannot be settled (the database refused the call) keeps its lease and is reclaimed later; it
never ends the run for the other jobs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol

from worker.config import DEFAULTS, Settings
from worker.db import Database, Row
from worker.errors import WorkerError
from worker.queue.handlers import Handler, Handlers, JobRun
from worker.queue.outcome import Complete, Defer, Fail, Outcome, UnknownJobType, for_error
from worker.queue.trace import JobTrace
from worker.runs import Budget

log = logging.getLogger(__name__)

IDLE_WAIT_SECONDS = 1.0  # how long the run loop waits for a finishing job before re-claiming
SETTLE_FAILED = "settle_failed"  # the outcome of a job the database would not let us settle


class Slots:
    """Slots shared by the runs of one process that claim the same kind of job: the fetch run
    and a process run's fetch lane together read at most FETCH_CONCURRENCY mailboxes."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._free = self.size
        self._lock = threading.Lock()

    def take(self, wanted: int) -> int:
        """Up to `wanted` slots, as many as are free (maybe none)."""
        with self._lock:
            granted = max(0, min(wanted, self._free))
            self._free -= granted
            return granted

    def give(self, count: int) -> None:
        """Return slots taken earlier."""
        with self._lock:
            self._free = min(self.size, self._free + max(0, count))

    @property
    def free(self) -> int:
        with self._lock:
            return self._free


@dataclass(frozen=True)
class RunnerOptions:
    """How a run claims: pool size and lease; the defaults are Settings'."""

    concurrency: int = DEFAULTS.process_concurrency
    lease_seconds: int = DEFAULTS.lease_seconds
    heartbeat_seconds: float | None = None  # default: a third of the lease
    # Shared with other runs of this process (None: this run's `concurrency` alone counts).
    slots: Slots | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RunnerOptions:
        """Runner tuning from Settings."""
        return cls(concurrency=settings.process_concurrency, lease_seconds=settings.lease_seconds)


def new_worker_id(run_id: str | None = None) -> str:
    """A worker id unique per process and run, readable in the DLQ tool."""
    return f"{socket.gethostname()}:{os.getpid()}:{run_id or time.time_ns()}"


class Heartbeat:
    """Renews the leases of in-flight jobs so a long job is never reclaimed under our feet."""

    def __init__(
        self, db: Database, worker_id: str, lease_seconds: int, every_seconds: float
    ) -> None:
        self.db, self.worker_id = db, worker_id
        self.lease_seconds, self.every = lease_seconds, every_seconds
        self.job_ids: set[str] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="lease-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def add(self, job_id: str) -> None:
        with self.lock:
            self.job_ids.add(job_id)

    def discard(self, job_id: str) -> None:
        with self.lock:
            self.job_ids.discard(job_id)

    def _loop(self) -> None:
        while not self.stop.wait(self.every):
            with self.lock:
                ids = sorted(self.job_ids)
            if not ids:
                continue
            try:
                self.db.extend_lease(self.worker_id, ids, self.lease_seconds)
            except WorkerError:
                log.exception("lease heartbeat failed; will retry")


def execute(handler: Handler | None, run: JobRun) -> Outcome | Fail | Defer:
    """Run the job's handler and say how to settle it (no queue call is made here)."""
    try:
        if handler is None:
            # Claimed but no longer handled (e.g. removed between claim and dispatch).
            raise UnknownJobType(str(run.job.get("job_type")))
        return handler.handle(run)
    except UnknownJobType as exc:
        log.error("job %s: %s", run.job_id, exc)
        return for_error(exc)
    except WorkerError as exc:
        return for_error(exc)
    except Exception as exc:
        log.exception("job %s failed unexpectedly", run.job_id)
        return for_error(exc)


def settle(db: Database, run: JobRun, result: Outcome | Fail | Defer) -> str | None:
    """Report the job's result to the queue; returns fail_job's new status when it failed."""
    job_id, worker_id = run.job_id, run.worker_id
    if isinstance(result, Complete):
        db.complete_job(job_id, worker_id, result.summary)
    elif isinstance(result, Defer):
        db.defer_job(job_id, worker_id, result.seconds, result.reason)
    elif isinstance(result, Fail):
        return db.fail_job(
            job_id, worker_id, result.error, result.error_type, result.retry_after_seconds
        )
    # Settled: the handler's own SQL completed the job.
    return None


def run_job(db: Database, handlers: Handlers, job: Mapping[str, Any], worker_id: str) -> str:
    """Run one claimed job and settle it in the queue; returns its outcome label."""
    run = JobRun(job=job, worker_id=worker_id, trace=JobTrace(job))
    handler = handlers.get(str(job.get("job_type")))
    started = time.perf_counter()
    result = execute(handler, run)
    label = result.label
    try:
        status = settle(db, run, result)
    except Exception:
        # The job keeps its lease and is reclaimed once it expires; the run goes on.
        log.exception("job %s: could not settle it as %s", run.job_id, label)
        status, label = None, SETTLE_FAILED
    if status == "dead_letter" and handler is not None:
        try:
            handler.dead_lettered(job)
        except Exception:
            log.exception("job %s: its handler failed on dead-lettering", run.job_id)
    if run.trace.events:
        try:
            db.record_events(run.trace.events)
        except Exception:
            log.exception("job %s: could not record its events", run.job_id)
    log.debug("job %s -> %s in %.0f ms", run.job_id, label, (time.perf_counter() - started) * 1000)
    return label


class Activity(Protocol):
    """Lets runs that share a budget (lanes, worker/queue/lanes.py) wait for one another."""

    def report(self, busy: bool) -> None:
        """This run has jobs in flight (or just claimed some), or is idle."""
        ...

    def others_busy(self) -> bool:
        """Whether another run of the group is still working (then an idle run keeps polling)."""
        ...


def run_queue(
    db: Database,
    handlers: Handlers,
    budget: Budget,
    *,
    options: RunnerOptions | None = None,
    worker_id: str | None = None,
    activity: Activity | None = None,
) -> dict[str, Any]:
    """One run: drain due jobs of the registered types within the budget; the run summary.

    With `activity`, a run with nothing to do keeps polling (every IDLE_WAIT_SECONDS) while
    another run of its group is busy, since that run's jobs may create work for this one.
    """
    options = options or RunnerOptions()
    worker_id = worker_id or new_worker_id()
    job_types = list(handlers.job_types)
    outcomes: dict[str, int] = {}
    claimed = 0
    started = time.monotonic()
    in_flight: dict[Future[str], str] = {}
    heartbeat_every = options.heartbeat_seconds or max(1.0, options.lease_seconds / 3)
    slots = options.slots

    with (
        ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="job") as pool,
        Heartbeat(db, worker_id, options.lease_seconds, heartbeat_every) as heartbeat,
    ):
        while job_types:
            free = options.concurrency - len(in_flight)
            got = 0
            if free > 0 and not budget.expired():
                if slots is not None:
                    free = slots.take(free)
                jobs: list[Row] = []
                try:
                    if free > 0:
                        jobs = db.dequeue_jobs(worker_id, free, options.lease_seconds, job_types)
                finally:
                    if slots is not None:
                        slots.give(free - len(jobs))  # what the claim did not use
                got = len(jobs)
                claimed += got
                for job in jobs:
                    heartbeat.add(str(job["id"]))
                    future = pool.submit(run_job, db, handlers, job, worker_id)
                    in_flight[future] = str(job["id"])
            if activity is not None:
                activity.report(bool(in_flight))
            if not in_flight:
                if budget.expired():
                    break
                if got == 0:
                    if activity is None or not activity.others_busy():
                        break
                    budget.stop_event.wait(IDLE_WAIT_SECONDS)
                continue
            # A full pool, an empty claim or a spent budget: wait for a job to finish (which may
            # also unblock another job of the same conversation) before claiming again.
            if free - got <= 0 or got == 0 or budget.expired():
                done, _ = wait(in_flight, timeout=IDLE_WAIT_SECONDS, return_when=FIRST_COMPLETED)
                for future in done:
                    heartbeat.discard(in_flight.pop(future))
                    if slots is not None:
                        slots.give(1)
                    outcome = future.result()
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1

    if activity is not None:
        activity.report(False)
    return {
        "worker_id": worker_id,
        "claimed": claimed,
        "outcomes": outcomes,
        "processed": sum(outcomes.values()),
        "settle_failed": outcomes.get(SETTLE_FAILED, 0),
        "duration_seconds": round(time.monotonic() - started, 3),
        "budget_expired": budget.expired(),
    }
