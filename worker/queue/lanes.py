"""Lanes: several runner loops in one run, each with its own job types and its own slots.

A worker reads mailboxes (fetch_mailbox jobs: IMAP, seconds each) and answers emails
(process_email and send_reply: Claude, Shopify, SMTP). Given one pool, whichever kind is due in
numbers would hold every slot: a sweep of a thousand mailboxes would stop replies for its
length, a backlog of emails would stop new mail from being read. Each lane claims only its types
into its own slots, so neither kind can starve the other on a machine, whatever the priorities.
The lanes of a run share its budget; a lane with nothing to do keeps polling while another is
busy (a fetch enqueues emails, an email run may outlast the next interval's fetch jobs), and the
run ends when every lane is idle.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from worker.db import Database
from worker.queue.handlers import Handlers
from worker.queue.runner import RunnerOptions, new_worker_id, run_queue
from worker.runs import Budget


@dataclass(frozen=True)
class Lane:
    """One runner loop: the job types it claims (its handlers) and its slots."""

    name: str
    handlers: Handlers
    options: RunnerOptions


class _Group:
    """Which lanes of a run are busy (the runner's Activity, one view per lane)."""

    def __init__(self, names: Sequence[str]) -> None:
        self._lock = threading.Lock()
        # Every lane counts as busy until it first reports: a lane starting a moment later
        # must not make an idle one give up before it has claimed anything.
        self._busy = dict.fromkeys(names, True)

    def view(self, name: str) -> _LaneActivity:
        return _LaneActivity(self, name)

    def report(self, name: str, busy: bool) -> None:
        with self._lock:
            self._busy[name] = busy

    def others_busy(self, name: str) -> bool:
        with self._lock:
            return any(busy for other, busy in self._busy.items() if other != name)


@dataclass(frozen=True)
class _LaneActivity:
    group: _Group
    name: str

    def report(self, busy: bool) -> None:
        self.group.report(self.name, busy)

    def others_busy(self) -> bool:
        return self.group.others_busy(self.name)


def run_lanes(
    db: Database, lanes: Sequence[Lane], budget: Budget, *, worker_id: str | None = None
) -> dict[str, Any]:
    """Run every lane within one budget; the run summary: totals plus each lane's own."""
    worker_id = worker_id or new_worker_id()
    group = _Group([lane.name for lane in lanes])

    def run(lane: Lane) -> dict[str, Any]:
        try:
            return run_queue(
                db,
                lane.handlers,
                budget,
                options=lane.options,
                worker_id=worker_id,
                activity=group.view(lane.name),
            )
        finally:
            group.report(lane.name, False)

    with ThreadPoolExecutor(max_workers=max(1, len(lanes)), thread_name_prefix="lane") as pool:
        results = list(pool.map(run, lanes))
    by_lane = {lane.name: result for lane, result in zip(lanes, results, strict=True)}
    outcomes: dict[str, int] = {}
    for result in results:
        for label, count in result["outcomes"].items():
            outcomes[label] = outcomes.get(label, 0) + count
    return {
        "worker_id": worker_id,
        "claimed": sum(r["claimed"] for r in results),
        "outcomes": outcomes,
        "processed": sum(r["processed"] for r in results),
        "settle_failed": sum(r["settle_failed"] for r in results),
        "duration_seconds": max((r["duration_seconds"] for r in results), default=0.0),
        "budget_expired": budget.expired(),
        "lanes": by_lane,
    }
