"""The registry of job handlers: one handler per job type, and what a handler is.

A handler knows its job (River's Worker[T], pgqueuer's entrypoint, procrastinate's task); the
runner knows leases, budgets and outcomes. Registering a handler is what makes the runner claim
jobs of its type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from worker.queue.outcome import Outcome
from worker.queue.trace import JobTrace


@dataclass(frozen=True)
class JobRun:
    """A claimed job as its handler sees it: the row, who holds its lease, and its trace."""

    job: Mapping[str, Any]
    worker_id: str
    trace: JobTrace

    @property
    def job_id(self) -> str:
        return str(self.job["id"])


class Handler(Protocol):
    """Does the work of one job type."""

    def handle(self, run: JobRun) -> Outcome:
        """Do the job; raise a worker.errors type to fail (retry) or defer it."""
        ...

    def dead_lettered(self, job: Mapping[str, Any]) -> None:
        """Undo what must not outlive a job that will not be retried (e.g. refund a charge)."""
        ...


class Handlers:
    """job_type -> handler; the runner claims exactly the registered types."""

    def __init__(self) -> None:
        self._by_type: dict[str, Handler] = {}

    def register(self, job_type: str, handler: Handler) -> None:
        """Add the handler of `job_type`; a type has one handler, so a second one is a bug."""
        if not job_type:
            raise ValueError("a job type must be a non-empty string")
        if job_type in self._by_type:
            raise ValueError(f"job type {job_type!r} already has a handler")
        self._by_type[job_type] = handler

    def get(self, job_type: str) -> Handler | None:
        """The handler of `job_type`, or None."""
        return self._by_type.get(job_type)

    @property
    def job_types(self) -> tuple[str, ...]:
        """Every registered type, in registration order (what the runner claims)."""
        return tuple(self._by_type)
