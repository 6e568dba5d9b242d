"""The events and timings of one job, collected while it runs and written once when it ends."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class JobTrace:
    """The events and timings of one job, written in one call after the job is settled."""

    job: Mapping[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    timings_ms: dict[str, int] = field(default_factory=dict)
    message_id: str | None = None

    def event(self, event_type: str, **detail: Any) -> None:
        """Add an event of this job (with its store, conversation and, once known, message)."""
        self.events.append(
            {
                "store_id": self.job.get("store_id"),
                "job_id": self.job["id"],
                "conversation_id": self.job.get("conversation_id"),
                "message_id": self.message_id,
                "event_type": event_type,
                "detail": detail,
            }
        )

    def timed(self, name: str) -> _Timer:
        """A context manager recording how long `name` took, in milliseconds."""
        return _Timer(self.timings_ms, name)


class _Timer:
    def __init__(self, sink: dict[str, int], name: str) -> None:
        self.sink, self.name = sink, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.sink[self.name] = round((time.perf_counter() - self.start) * 1000)


def finish(trace: JobTrace, outcome: str, **detail: Any) -> dict[str, Any]:
    """The job's result summary as stored by complete_job (None values left out)."""
    return {
        "outcome": outcome,
        **{k: v for k, v in detail.items() if v is not None},
        "timings_ms": dict(trace.timings_ms),
    }
