"""The generic runner (worker.queue): registry, outcome mapping, dispatch, settling, summary.

An in-memory queue stands in for Postgres; the SQL side of these calls is proven by pgTAP and
by tests/integration/test_queue_handlers.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

import pytest

from worker.db import Database
from worker.errors import CircuitOpenError, DatabaseError, PermanentError, TransientError
from worker.queue.handlers import Handlers, JobRun
from worker.queue.lanes import Lane, run_lanes
from worker.queue.outcome import (
    DEFAULT_DEFER_SECONDS,
    Complete,
    Defer,
    Fail,
    Outcome,
    Settled,
    UnknownJobType,
    for_error,
)
from worker.queue.runner import RunnerOptions, Slots, run_queue
from worker.runs import Budget


class MemoryQueue:
    """The queue calls of Database over a list of jobs, recording every settle call."""

    def __init__(self, *jobs: dict[str, Any]) -> None:
        self.pending = list(jobs)
        self.lock = threading.Lock()
        self.claimed_types: list[list[str]] = []
        self.calls: list[tuple[Any, ...]] = []
        self.fail_status = "pending"
        self.broken: set[tuple[str, str]] = set()  # (call, job id) that raise DatabaseError

    def _maybe_break(self, call: str, job_id: str) -> None:
        if (call, job_id) in self.broken:
            raise DatabaseError(f"{call} failed: connection reset")

    def dequeue_jobs(
        self, worker_id: str, batch_size: int, lease_seconds: int, job_types: Sequence[str]
    ) -> list[dict[str, Any]]:
        with self.lock:
            self.claimed_types.append(list(job_types))
            # Like dequeue_jobs: only the asked-for types (a test may still slip one through).
            taken = [j for j in self.pending if j["job_type"] in job_types or j.get("slip")]
            taken = taken[:batch_size]
            for job in taken:
                self.pending.remove(job)
            return taken

    def extend_lease(self, worker_id: str, job_ids: Sequence[str], lease_seconds: int) -> int:
        return len(job_ids)

    def complete_job(self, job_id: str, worker_id: str, result: Any = None) -> bool:
        self._maybe_break("complete_job", job_id)
        self.calls.append(("complete_job", job_id, result["outcome"]))
        return True

    def fail_job(
        self,
        job_id: str,
        worker_id: str,
        error: str,
        error_type: str | None = None,
        retry_after_seconds: int | None = None,
    ) -> str:
        self._maybe_break("fail_job", job_id)
        self.calls.append(("fail_job", job_id, error, error_type, retry_after_seconds))
        return "dead_letter" if error_type == "permanent" else self.fail_status

    def defer_job(self, job_id: str, worker_id: str, delay_seconds: int, reason: str) -> bool:
        self._maybe_break("defer_job", job_id)
        self.calls.append(("defer_job", job_id, delay_seconds))
        return True

    def record_events(self, events: Sequence[Mapping[str, Any]]) -> int:
        self._maybe_break("record_events", str(events[0]["job_id"]))
        self.calls.append(("record_events", [e["event_type"] for e in events]))
        return len(events)

    def settle_calls(self, job_id: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] != "record_events" and c[1] == job_id]


class Scripted:
    """A handler whose result (or error) per job id is given by the test."""

    def __init__(self, results: Mapping[str, Outcome | Exception]) -> None:
        self.results = results
        self.handled: list[str] = []
        self.dead: list[str] = []

    def handle(self, run: JobRun) -> Outcome:
        self.handled.append(run.job_id)
        run.trace.event("test.handled")
        result = self.results[run.job_id]
        if isinstance(result, Exception):
            raise result
        return result

    def dead_lettered(self, job: Mapping[str, Any]) -> None:
        self.dead.append(str(job["id"]))


def job(job_id: str, job_type: str = "echo", **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "job_type": job_type, "store_id": None, **extra}


def done(outcome: str) -> Complete:
    return Complete({"outcome": outcome})


def run(queue: MemoryQueue, handlers: Handlers) -> dict[str, Any]:
    return run_queue(
        cast(Database, queue),
        handlers,
        Budget(10.0),
        options=RunnerOptions(concurrency=2, lease_seconds=60),
        worker_id="w1",
    )


# -- the registry -------------------------------------------------------------------------------


def test_a_job_type_has_one_handler_and_the_registry_lists_types_in_order() -> None:
    handlers = Handlers()
    handlers.register("process_email", Scripted({}))
    handlers.register("notify", Scripted({}))
    assert handlers.job_types == ("process_email", "notify")
    with pytest.raises(ValueError, match="already has a handler"):
        handlers.register("notify", Scripted({}))
    with pytest.raises(ValueError):
        handlers.register("", Scripted({}))
    assert handlers.get("unknown") is None


# -- from an error to a queue call --------------------------------------------------------------


def test_errors_map_to_fail_or_defer() -> None:
    open_breaker = CircuitOpenError("claude", retry_after=30)
    assert for_error(open_breaker) == Defer(30, str(open_breaker))
    assert for_error(CircuitOpenError("claude")) == Defer(
        DEFAULT_DEFER_SECONDS, str(CircuitOpenError("claude"))
    )
    assert for_error(TransientError("HTTP 429", retry_after=2.5)) == Fail(
        "failed_transient", "HTTP 429", "transient", 3
    )
    assert for_error(PermanentError("HTTP 400")) == Fail(
        "failed_permanent", "HTTP 400", "permanent"
    )
    unexpected = for_error(KeyError("x"))
    assert unexpected == Fail("failed_unexpected", "unexpected: KeyError('x')", "transient")


def test_an_unknown_job_type_is_a_permanent_error_naming_the_type() -> None:
    error = UnknownJobType("send_invoice")
    assert error.error_type == "permanent" and "send_invoice" in str(error)


# -- dispatch and settling ----------------------------------------------------------------------


def test_the_runner_claims_only_registered_types_and_settles_each_outcome() -> None:
    queue = MemoryQueue(job("a"), job("b"), job("c"), job("d"), job("other", "not_mine"))
    handler = Scripted(
        {
            "a": done("echoed"),
            "b": Settled({"outcome": "replied"}),
            "c": TransientError("HTTP 503", retry_after=7),
            "d": CircuitOpenError("smtp:s1", retry_after=90),
        }
    )
    handlers = Handlers()
    handlers.register("echo", handler)

    summary = run(queue, handlers)

    assert all(types == ["echo"] for types in queue.claimed_types)
    assert [j["id"] for j in queue.pending] == ["other"]
    assert queue.settle_calls("a") == [("complete_job", "a", "echoed")]
    assert queue.settle_calls("b") == []  # the handler's own SQL completed it
    assert queue.settle_calls("c") == [("fail_job", "c", "HTTP 503", "transient", 7)]
    assert queue.settle_calls("d") == [("defer_job", "d", 90)]
    assert summary["outcomes"] == {
        "echoed": 1,
        "replied": 1,
        "failed_transient": 1,
        "deferred": 1,
    }
    assert summary["claimed"] == summary["processed"] == 4
    assert summary["settle_failed"] == 0
    # each job's events are written once it is settled
    assert queue.calls.count(("record_events", ["test.handled"])) == 4


def test_a_claimed_job_without_a_handler_fails_permanently_naming_its_type() -> None:
    queue = MemoryQueue(job("x", "removed_type", slip=True))
    handlers = Handlers()
    handlers.register("echo", Scripted({}))

    summary = run(queue, handlers)

    [call] = queue.settle_calls("x")
    assert call[0] == "fail_job" and call[3] == "permanent"
    assert "'removed_type'" in call[2]
    assert summary["outcomes"] == {"failed_permanent": 1}


def test_a_dead_lettered_job_is_handed_back_to_its_handler() -> None:
    queue = MemoryQueue(job("p"), job("t"))
    handler = Scripted({"p": PermanentError("HTTP 400"), "t": TransientError("HTTP 503")})
    handlers = Handlers()
    handlers.register("echo", handler)

    run(queue, handlers)

    assert handler.dead == ["p"]  # the transient one is pending again, not dead


def test_a_job_that_cannot_be_settled_keeps_its_lease_and_the_run_goes_on() -> None:
    queue = MemoryQueue(job("a"), job("b"), job("c"), job("d"))
    queue.broken = {("complete_job", "a"), ("fail_job", "b"), ("record_events", "c")}
    handler = Scripted(
        {
            "a": done("echoed"),
            "b": TransientError("HTTP 503"),
            "c": done("echoed"),
            "d": done("echoed"),
        }
    )
    handlers = Handlers()
    handlers.register("echo", handler)

    summary = run(queue, handlers)

    assert sorted(handler.handled) == ["a", "b", "c", "d"]
    assert queue.settle_calls("c") == [("complete_job", "c", "echoed")]
    assert queue.settle_calls("d") == [("complete_job", "d", "echoed")]
    assert summary["outcomes"] == {"settle_failed": 2, "echoed": 2}
    assert summary["settle_failed"] == 2


def test_a_bug_in_a_handler_is_a_bounded_transient_failure() -> None:
    queue = MemoryQueue(job("bug"))
    handlers = Handlers()
    handlers.register("echo", Scripted({"bug": ZeroDivisionError("oops")}))

    summary = run(queue, handlers)

    [call] = queue.settle_calls("bug")
    assert call[:4] == ("fail_job", "bug", "unexpected: ZeroDivisionError('oops')", "transient")
    assert summary["outcomes"] == {"failed_unexpected": 1}


def test_a_run_without_handlers_claims_nothing() -> None:
    queue = MemoryQueue(job("a"))
    summary = run(queue, Handlers())
    assert queue.claimed_types == [] and summary["claimed"] == 0


def test_a_handler_failing_on_dead_lettering_does_not_undo_the_settle() -> None:
    class Clumsy(Scripted):
        def dead_lettered(self, job: Mapping[str, Any]) -> None:
            raise RuntimeError("refund service down")

    queue = MemoryQueue(job("p"), job("ok"))
    handlers = Handlers()
    handlers.register("echo", Clumsy({"p": PermanentError("HTTP 400"), "ok": done("echoed")}))

    summary = run(queue, handlers)

    assert queue.settle_calls("p") == [("fail_job", "p", "HTTP 400", "permanent", None)]
    assert summary["outcomes"] == {"failed_permanent": 1, "echoed": 1}


# -- shared slots and lanes --------------------------------------------------------------------


class Gated:
    """A handler whose jobs wait for a gate; records the most jobs it ran at once."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def handle(self, run: JobRun) -> Outcome:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            assert self.gate.wait(10), "the gate never opened"
            return done("ok")
        finally:
            with self.lock:
                self.running -= 1

    def dead_lettered(self, job: Mapping[str, Any]) -> None:
        pass


def test_slots_give_out_only_what_is_free() -> None:
    slots = Slots(3)
    assert (slots.take(2), slots.take(2), slots.take(1)) == (2, 1, 0)
    slots.give(2)
    assert slots.free == 2
    slots.give(5)  # never more than its size
    assert slots.free == 3


def test_two_runs_sharing_slots_hold_at_most_the_slots_together() -> None:
    queue = MemoryQueue(*(job(f"s{n}") for n in range(8)))
    slots = Slots(3)
    gate = threading.Event()
    handler = Gated(gate)
    handlers = Handlers()
    handlers.register("echo", handler)
    options = RunnerOptions(concurrency=3, lease_seconds=30, slots=slots)
    summaries: list[dict[str, Any]] = []

    def run() -> None:
        summaries.append(
            run_queue(cast(Database, queue), handlers, Budget(60), options=options)
        )

    runs = [threading.Thread(target=run) for _ in range(2)]
    for thread in runs:
        thread.start()
    threading.Timer(0.5, gate.set).start()
    for thread in runs:
        thread.join(20)

    assert handler.most == 3  # two runs of 3 each, but 3 slots between them
    assert sum(s["processed"] for s in summaries) == 8
    assert slots.free == 3  # every slot given back


def test_a_claim_that_fails_gives_its_slots_back() -> None:
    class Broken(MemoryQueue):
        def dequeue_jobs(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            raise DatabaseError("dequeue_jobs failed: connection reset")

    slots = Slots(2)
    handlers = Handlers()
    handlers.register("echo", Scripted({}))
    with pytest.raises(DatabaseError):
        run_queue(
            cast(Database, Broken()), handlers, Budget(60),
            options=RunnerOptions(concurrency=2, slots=slots),
        )
    assert slots.free == 2


def test_an_idle_lane_keeps_polling_while_another_lane_creates_its_work() -> None:
    # The fetch lane's job enqueues an email; the email lane, idle at first, must still be
    # there to take it instead of ending the run before the fetch finished.
    queue = MemoryQueue(job("f1", "fetch"))

    class Fetching:
        def handle(self, run: JobRun) -> Outcome:
            time.sleep(1.5)  # longer than the runner's idle wait
            with queue.lock:
                queue.pending.append(job("e1", "email"))
            return done("fetched")

        def dead_lettered(self, job: Mapping[str, Any]) -> None:
            pass

    fetch, email = Handlers(), Handlers()
    fetch.register("fetch", Fetching())
    email.register("email", Scripted({"e1": done("answered")}))
    summary = run_lanes(
        cast(Database, queue),
        [
            Lane("email", email, RunnerOptions(concurrency=2)),
            Lane("fetch", fetch, RunnerOptions(concurrency=1)),
        ],
        Budget(60),
    )

    assert summary["lanes"]["fetch"]["outcomes"] == {"fetched": 1}
    assert summary["lanes"]["email"]["outcomes"] == {"answered": 1}
    assert summary["processed"] == 2 and queue.pending == []
    # Each lane claimed only its own types.
    assert {tuple(t) for t in queue.claimed_types} == {("email",), ("fetch",)}
