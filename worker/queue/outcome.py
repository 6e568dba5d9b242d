"""What a handler's run of one job comes to, and what the runner does with the queue for it.

A handler returns `Complete` (the runner completes the job with its summary) or `Settled` (its
own SQL function already completed the job in the transaction of its effect, as finish_send
does). An error it raises becomes `Fail` (retried or dead-lettered by fail_job) or `Defer` (an
open breaker: later, without spending an attempt). The mapping is pure and tested alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.errors import CircuitOpenError, ErrorType, PermanentError, TransientError, WorkerError

DEFAULT_DEFER_SECONDS = 60  # when an open breaker gives no hint of its cool-down


@dataclass(frozen=True)
class Complete:
    """The runner completes the job with this result summary."""

    summary: dict[str, Any]

    @property
    def label(self) -> str:
        return str(self.summary["outcome"])


@dataclass(frozen=True)
class Settled:
    """The handler's own SQL function already completed the job; nothing left to settle."""

    summary: dict[str, Any]

    @property
    def label(self) -> str:
        return str(self.summary["outcome"])


Outcome = Complete | Settled


@dataclass(frozen=True)
class Fail:
    """fail_job: a transient error is retried per the job type's policy, a permanent one is not."""

    label: str  # failed_transient | failed_permanent | failed_unexpected (the run summary's key)
    error: str
    error_type: ErrorType
    retry_after_seconds: int | None = None


@dataclass(frozen=True)
class Defer:
    """defer_job: back to pending after `seconds`, the attempt not spent."""

    seconds: int
    reason: str
    label: str = "deferred"


class UnknownJobType(PermanentError):
    """A claimed job whose type has no handler: never completed silently, never retried."""

    def __init__(self, job_type: str) -> None:
        super().__init__(f"no handler registered for job type {job_type!r}")
        self.job_type = job_type


def for_error(exc: Exception) -> Fail | Defer:
    """How the queue settles a job whose handler raised `exc`."""
    if isinstance(exc, CircuitOpenError):
        return Defer(exc.retry_after_seconds or DEFAULT_DEFER_SECONDS, str(exc))
    if isinstance(exc, WorkerError):
        retry_after = exc.retry_after_seconds if isinstance(exc, TransientError) else None
        return Fail(f"failed_{exc.error_type}", str(exc), exc.error_type, retry_after)
    # A bug, not an outage: retried a bounded number of times, then dead-lettered.
    return Fail("failed_unexpected", f"unexpected: {exc!r}", "transient")
