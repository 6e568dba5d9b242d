"""Background runs: a time budget, run records, and a manager with a per-kind single-run guard.

A trigger (HTTP or CLI) starts a run in a thread and returns at once; the run function gets a
`Budget` and must stop claiming new work once `budget.expired()` is true. Unfinished jobs keep
their leases and are reclaimed by a later run, so stopping early never loses work.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

logger = logging.getLogger(__name__)

RunKind = Literal["fetch", "process"]
RunStatus = Literal["running", "succeeded", "failed"]
Runner = Callable[["Budget"], Mapping[str, Any]]
FinishHook = Callable[["RunRecord", "RunManager"], None]

HISTORY_SIZE = 100  # finished run records kept for GET /runs/<id>
SHUTDOWN_GRACE_SECONDS = 20.0  # below gunicorn's graceful_timeout, so a run can end cleanly


class Budget:
    """A deadline on a monotonic clock, also expired early when a shared stop event is set."""

    def __init__(
        self,
        seconds: float,
        *,
        stop_event: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self.seconds = float(seconds)
        self.started = clock()
        self.deadline = self.started + self.seconds
        self.stop_event = stop_event if stop_event is not None else threading.Event()

    def remaining(self) -> float:
        """Seconds left before the deadline (0.0 once spent or stopped)."""
        if self.stop_event.is_set():
            return 0.0
        return max(0.0, self.deadline - self._clock())

    def expired(self) -> bool:
        """True once the deadline has passed or a stop was requested: claim no more work."""
        return self.stop_event.is_set() or self._clock() >= self.deadline

    @property
    def deadline_passed(self) -> bool:
        """True when the time itself is spent (as opposed to a requested stop)."""
        return self._clock() >= self.deadline

    @property
    def stop_requested(self) -> bool:
        """True when shutdown asked the run to stop."""
        return self.stop_event.is_set()


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run, as kept for GET /runs/<id> and logged on completion."""

    id: str
    kind: str
    status: RunStatus
    started_at: datetime
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    summary: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    errors: tuple[Mapping[str, str], ...] = ()
    budget_seconds: float = 0.0
    budget_exhausted: bool = False
    stop_requested: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view of the record."""
        return {
            "run_id": self.id,
            "kind": self.kind,
            "status": self.status,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "duration_seconds": self.duration_seconds,
            "summary": dict(self.summary),
            "errors": [dict(e) for e in self.errors],
            "budget_seconds": self.budget_seconds,
            "budget_exhausted": self.budget_exhausted,
            "stop_requested": self.stop_requested,
        }


@dataclasses.dataclass(frozen=True)
class RunStats:
    """Counters of this container's runs, for /metrics."""

    finished: Mapping[tuple[str, str], int]  # (kind, status) -> count
    duration_sum: Mapping[str, float]  # kind -> seconds
    duration_count: Mapping[str, int]
    running: Mapping[str, int]  # kind -> 0 or 1
    last_success: Mapping[str, float]  # kind -> unix time


class ShuttingDown(RuntimeError):
    """Raised when a run is requested after shutdown began."""


def error_entry(exc: BaseException) -> dict[str, str]:
    """Describe an exception for a run record (type, transient/permanent when known, message)."""
    entry = {"type": type(exc).__name__, "message": str(exc) or repr(exc)}
    error_type = getattr(exc, "error_type", None)
    if isinstance(error_type, str):
        entry["error_type"] = error_type
    return entry


def start_process_after_fetch(record: RunRecord, manager: RunManager) -> None:
    """Finish hook: a fetch run that stored new messages starts a process run at once."""
    if record.kind != "fetch" or record.status != "succeeded" or record.stop_requested:
        return
    stored = record.summary.get("stored", 0)
    if isinstance(stored, int) and stored > 0:
        try:
            manager.start("process")
        except ShuttingDown:
            pass


class RunManager:
    """Starts runs in background threads, at most one per kind at a time in this process."""

    def __init__(
        self,
        runners: Mapping[str, Runner],
        *,
        budget_seconds: float,
        history_size: int = HISTORY_SIZE,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._runners = runners
        self._budget_seconds = budget_seconds
        self._history_size = history_size
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._records: OrderedDict[str, RunRecord] = OrderedDict()
        self._running: dict[str, str] = {}  # kind -> run id
        self._done: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._finished: dict[tuple[str, str], int] = {}
        self._duration_sum: dict[str, float] = {}
        self._duration_count: dict[str, int] = {}
        self._last_success: dict[str, float] = {}
        self.on_finish: list[FinishHook] = []

    @property
    def kinds(self) -> tuple[str, ...]:
        """The run kinds this manager can start."""
        return tuple(self._runners)

    @property
    def stopping(self) -> bool:
        """True once shutdown began."""
        return self._stop.is_set()

    def trigger(self, kind: str) -> tuple[RunRecord, bool]:
        """Start a run of `kind` or return the one in progress; the flag says if it started."""
        if kind not in self._runners:
            raise KeyError(f"unknown run kind: {kind!r}")
        with self._lock:
            if self._stop.is_set():
                raise ShuttingDown("worker is shutting down")
            running_id = self._running.get(kind)
            if running_id is not None:
                return self._records[running_id], False
            budget = Budget(self._budget_seconds, stop_event=self._stop, clock=self._clock)
            record = RunRecord(
                id=str(uuid.uuid4()),
                kind=kind,
                status="running",
                started_at=self._wall_clock(),
                budget_seconds=self._budget_seconds,
            )
            self._records[record.id] = record
            self._running[kind] = record.id
            self._done[record.id] = threading.Event()
            self._trim_history()
            # Daemon threads: shutdown() already grants the grace period, and an unfinished job
            # keeps its lease, so the interpreter must not wait on a run beyond that.
            thread = threading.Thread(
                target=self._execute,
                args=(record, budget),
                name=f"run-{kind}-{record.id[:8]}",
                daemon=True,
            )
            self._threads[record.id] = thread
            thread.start()
        return record, True

    def start(self, kind: str) -> RunRecord | None:
        """Start a run of `kind` in the background; None when one is already going."""
        record, started = self.trigger(kind)
        return record if started else None

    def get(self, run_id: str) -> RunRecord | None:
        """The latest state of a run kept in history, or None."""
        with self._lock:
            return self._records.get(run_id)

    def current(self, kind: str) -> RunRecord | None:
        """The run of `kind` in progress, if any."""
        with self._lock:
            run_id = self._running.get(kind)
            return self._records[run_id] if run_id else None

    def wait(self, run_id: str, timeout: float | None = None) -> RunRecord | None:
        """Block until the run finishes (or timeout); return its latest record."""
        with self._lock:
            done = self._done.get(run_id)
        if done is not None:
            done.wait(timeout)
        return self.get(run_id)

    def stats(self) -> RunStats:
        """A consistent snapshot of the run counters."""
        with self._lock:
            return RunStats(
                finished=dict(self._finished),
                duration_sum=dict(self._duration_sum),
                duration_count=dict(self._duration_count),
                running={kind: int(kind in self._running) for kind in self._runners},
                last_success=dict(self._last_success),
            )

    def request_stop(self) -> None:
        """Make every budget expire now and refuse new runs (safe from a signal handler)."""
        self._stop.set()

    def shutdown(self, grace_seconds: float = SHUTDOWN_GRACE_SECONDS) -> bool:
        """Ask running runs to stop claiming and wait up to `grace_seconds`; True if all ended."""
        with self._lock:
            self._stop.set()
            threads = [self._threads[rid] for rid in self._running.values()]
        deadline = self._clock() + grace_seconds
        for thread in threads:
            thread.join(max(0.0, deadline - self._clock()))
        unfinished = [t.name for t in threads if t.is_alive()]
        if unfinished:
            # Their jobs keep their leases and are reclaimed by the next run elsewhere.
            logger.warning("runs still active at shutdown: %s", ", ".join(unfinished))
        return not unfinished

    def _execute(self, record: RunRecord, budget: Budget) -> None:
        # Measured from the trigger, like the budget: the thread may start a little later, and a
        # run that spent its whole budget must not report less than the budget.
        started = budget.started
        summary: Mapping[str, Any] = {}
        errors: list[Mapping[str, str]] = []
        status: RunStatus = "succeeded"
        try:
            result = self._runners[record.kind](budget)
            summary = dict(result) if result is not None else {}
        except BaseException as exc:
            # BaseException too: whatever a runner raises, the guard must be released and the
            # failure recorded; a thread's death would otherwise block this kind forever.
            status = "failed"
            errors.append(error_entry(exc))
            logger.exception("run %s (%s) failed", record.id, record.kind)
        duration = max(0.0, self._clock() - started)
        finished_at = self._wall_clock()
        finished = dataclasses.replace(
            record,
            status=status,
            finished_at=finished_at,
            duration_seconds=round(duration, 6),
            summary=summary,
            errors=tuple(errors),
            budget_exhausted=budget.deadline_passed,
            stop_requested=budget.stop_requested,
        )
        with self._lock:
            if record.id in self._records:
                self._records[record.id] = finished
            self._running.pop(record.kind, None)
            self._threads.pop(record.id, None)
            key = (record.kind, status)
            self._finished[key] = self._finished.get(key, 0) + 1
            self._duration_sum[record.kind] = self._duration_sum.get(record.kind, 0.0) + duration
            self._duration_count[record.kind] = self._duration_count.get(record.kind, 0) + 1
            if status == "succeeded":
                self._last_success[record.kind] = finished_at.timestamp()
            done = self._done.get(record.id)
        # One JSON line: the record's fields sit beside the message (worker/logs.py).
        logger.info("run.finished", extra=summary_fields(finished))
        # Hooks run after the guard is released (a hook may start another run) and before
        # wait() returns, so a caller that waited sees what the hooks started.
        for hook in list(self.on_finish):
            try:
                hook(finished, self)
            except Exception:
                logger.exception("finish hook %r failed for run %s", hook, record.id)
        if done is not None:
            done.set()

    def _trim_history(self) -> None:
        # Called with the lock held; running runs are never evicted.
        running = set(self._running.values())
        for run_id in list(self._records):
            if len(self._records) <= self._history_size:
                break
            if run_id not in running:
                del self._records[run_id]
                self._done.pop(run_id, None)


def summary_fields(record: RunRecord) -> dict[str, Any]:
    """The fields of the run's completion log line (`event: run.finished` and the record)."""
    return {"event": "run.finished", **record.to_dict()}
