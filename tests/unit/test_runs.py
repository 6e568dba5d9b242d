"""RunManager, Budget and RunRecord: the single-run guard, budgets, failures, hooks, shutdown."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from worker import logs, runs
from worker.errors import PermanentError, TransientError

WAIT = 10.0  # seconds; a bound on a hung test, never an assertion about speed


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


class Gate:
    """A runner that blocks until released, so a run is reliably 'in progress'."""

    def __init__(self, summary: Mapping[str, Any] | None = None) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self.summary = dict(summary or {"done": 1})

    def __call__(self, budget: runs.Budget) -> Mapping[str, Any]:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(WAIT)
        return self.summary


def manager_with(runners: Mapping[str, runs.Runner], **kwargs: Any) -> runs.RunManager:
    kwargs.setdefault("budget_seconds", 110.0)
    return runs.RunManager(runners, **kwargs)


def finished(manager: runs.RunManager, record: runs.RunRecord | None) -> runs.RunRecord:
    assert record is not None
    result = manager.wait(record.id, WAIT)
    assert result is not None and result.status != "running"
    return result


# Budget


def test_budget_counts_down_on_the_injected_clock() -> None:
    clock = FakeClock()
    budget = runs.Budget(10, clock=clock)
    assert budget.remaining() == 10 and not budget.expired()
    clock.advance(9.5)
    assert budget.remaining() == pytest.approx(0.5) and not budget.expired()
    clock.advance(0.5)
    assert budget.expired() and budget.remaining() == 0.0 and budget.deadline_passed
    clock.advance(100)
    assert budget.remaining() == 0.0


def test_budget_expires_early_when_stop_is_requested() -> None:
    clock = FakeClock()
    stop = threading.Event()
    budget = runs.Budget(10, stop_event=stop, clock=clock)
    stop.set()
    assert budget.expired() and budget.stop_requested and not budget.deadline_passed
    assert budget.remaining() == 0.0


# Running, records, logs


def test_run_succeeds_and_keeps_its_summary_and_duration() -> None:
    clock = FakeClock()

    def fetch(budget: runs.Budget) -> Mapping[str, Any]:
        clock.advance(2.5)
        return {"stores": 3, "stored": 12}

    wall = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    manager = manager_with({"fetch": fetch}, clock=clock, wall_clock=lambda: wall)
    started = manager.start("fetch")
    assert started is not None and started.kind == "fetch"
    record = finished(manager, started)
    assert record.status == "succeeded"
    assert record.summary == {"stores": 3, "stored": 12}
    assert record.duration_seconds == 2.5
    assert record.errors == () and not record.budget_exhausted
    assert record.to_dict()["started_at"] == "2025-01-02T03:04:05+00:00"
    assert manager.get(started.id) == record


def test_each_finished_run_logs_one_json_line(caplog: pytest.LogCaptureFixture) -> None:
    manager = manager_with({"process": lambda budget: {"processed": 4, "sent": 3}})
    with caplog.at_level(logging.INFO, logger="worker.runs"):
        record = finished(manager, manager.start("process"))
    # Formatted as production formats it (worker/logs.py): one JSON object on one line.
    formatter = logs.json_formatter()
    lines = [formatter.format(r) for r in caplog.records if r.name == "worker.runs"]
    assert len(lines) == 1 and "\n" not in lines[0]
    payload = json.loads(lines[0])
    assert payload["message"] == "run.finished" and payload["level"] == "INFO"
    assert payload["event"] == "run.finished"
    assert payload["run_id"] == record.id and payload["kind"] == "process"
    assert payload["status"] == "succeeded"
    assert payload["summary"] == {"processed": 4, "sent": 3}
    assert payload["errors"] == [] and isinstance(payload["duration_seconds"], float)


def test_unknown_kind_is_rejected() -> None:
    manager = manager_with({"fetch": lambda budget: {}})
    with pytest.raises(KeyError):
        manager.start("bogus")


# The single-run guard


def test_second_start_of_the_same_kind_while_running_returns_none() -> None:
    gate = Gate()
    manager = manager_with({"fetch": gate, "process": lambda budget: {"processed": 0}})
    first = manager.start("fetch")
    assert first is not None and gate.entered.wait(WAIT)

    assert manager.start("fetch") is None
    record, started = manager.trigger("fetch")
    assert not started and record.id == first.id
    assert manager.current("fetch") == first
    # The guard is per kind: a process run can go at the same time.
    other = manager.start("process")
    assert other is not None and finished(manager, other).status == "succeeded"

    gate.release.set()
    assert finished(manager, first).status == "succeeded"
    assert gate.calls == 1
    again = manager.start("fetch")
    assert again is not None and again.id != first.id
    finished(manager, again)


def test_guard_holds_under_concurrent_triggers() -> None:
    gate = Gate()
    manager = manager_with({"fetch": gate})
    results: list[tuple[runs.RunRecord, bool]] = []
    barrier = threading.Barrier(8)

    def trigger() -> None:
        barrier.wait()
        results.append(manager.trigger("fetch"))

    threads = [threading.Thread(target=trigger) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert sorted(started for _, started in results) == [False] * 7 + [True]
    assert len({record.id for record, _ in results}) == 1
    gate.release.set()
    finished(manager, results[0][0])
    assert gate.calls == 1


# The budget inside a run


def test_runner_that_checks_the_budget_stops_and_the_record_shows_it() -> None:
    clock = FakeClock()

    def process(budget: runs.Budget) -> Mapping[str, Any]:
        processed = 0
        while not budget.expired():
            processed += 1
            clock.advance(1.0)  # each job takes a second of the 5-second budget
        return {"processed": processed, "stopped_early": True}

    manager = manager_with({"process": process}, budget_seconds=5, clock=clock)
    record = finished(manager, manager.start("process"))
    assert record.status == "succeeded"
    assert record.summary["processed"] == 5
    assert record.budget_exhausted and not record.stop_requested
    assert record.budget_seconds == 5


# Failures


def test_runner_that_raises_ends_failed_with_the_error_and_the_manager_goes_on() -> None:
    calls = {"n": 0}

    def fetch(budget: runs.Budget) -> Mapping[str, Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise TransientError("connection refused", service="database")
        return {"stored": 0}

    manager = manager_with({"fetch": fetch})
    failed = finished(manager, manager.start("fetch"))
    assert failed.status == "failed"
    assert failed.errors == (
        {
            "type": "TransientError",
            "message": "database: connection refused",
            "error_type": "transient",
        },
    )
    assert failed.summary == {}
    assert manager.current("fetch") is None  # the guard was released
    assert finished(manager, manager.start("fetch")).status == "succeeded"
    stats = manager.stats()
    assert stats.finished == {("fetch", "failed"): 1, ("fetch", "succeeded"): 1}


def test_base_exceptions_are_recorded_too() -> None:
    def fetch(budget: runs.Budget) -> Mapping[str, Any]:
        raise SystemExit(3)

    manager = manager_with({"fetch": fetch})
    record = finished(manager, manager.start("fetch"))
    assert record.status == "failed" and record.errors[0]["type"] == "SystemExit"
    assert manager.current("fetch") is None


def test_error_entry_without_error_type() -> None:
    assert runs.error_entry(ValueError("bad")) == {"type": "ValueError", "message": "bad"}
    assert runs.error_entry(PermanentError("no"))["error_type"] == "permanent"


# Hooks


def test_fetch_that_stored_messages_starts_a_process_run() -> None:
    processed = threading.Event()

    def process(budget: runs.Budget) -> Mapping[str, Any]:
        processed.set()
        return {"processed": 2}

    manager = manager_with({"fetch": lambda budget: {"stored": 2}, "process": process})
    manager.on_finish.append(runs.start_process_after_fetch)
    finished(manager, manager.start("fetch"))
    # wait() returns after the hooks ran, so the process run exists (or already ended) now.
    assert processed.wait(WAIT)
    # One snapshot: between two calls the run could move from running to finished unseen.
    stats = manager.stats()
    assert stats.finished.get(("process", "succeeded"), 0) + stats.running["process"] == 1


def test_fetch_that_stored_nothing_starts_no_process_run() -> None:
    calls: list[str] = []
    manager = manager_with(
        {"fetch": lambda budget: {"stored": 0}, "process": lambda budget: calls.append("p") or {}}
    )
    manager.on_finish.append(runs.start_process_after_fetch)
    finished(manager, manager.start("fetch"))
    assert calls == [] and manager.current("process") is None


def test_chained_process_is_not_doubled_when_one_is_running() -> None:
    gate = Gate()
    manager = manager_with({"fetch": lambda budget: {"stored": 5}, "process": gate})
    manager.on_finish.append(runs.start_process_after_fetch)
    first_process = manager.start("process")
    assert first_process is not None and gate.entered.wait(WAIT)
    finished(manager, manager.start("fetch"))
    assert manager.current("process") == first_process
    gate.release.set()
    finished(manager, first_process)
    assert gate.calls == 1


def test_a_failing_hook_does_not_break_the_run(caplog: pytest.LogCaptureFixture) -> None:
    def broken(record: runs.RunRecord, manager: runs.RunManager) -> None:
        raise RuntimeError("hook bug")

    manager = manager_with({"fetch": lambda budget: {"stored": 0}})
    manager.on_finish.append(broken)
    with caplog.at_level(logging.ERROR, logger="worker.runs"):
        record = finished(manager, manager.start("fetch"))
    assert record.status == "succeeded"
    assert any("finish hook" in r.getMessage() for r in caplog.records)
    assert finished(manager, manager.start("fetch")).status == "succeeded"


# History, stats, shutdown


def test_history_keeps_the_last_n_runs() -> None:
    manager = manager_with({"fetch": lambda budget: {}}, history_size=2)
    ids = [finished(manager, manager.start("fetch")).id for _ in range(3)]
    assert manager.get(ids[0]) is None
    assert manager.get(ids[1]) is not None and manager.get(ids[2]) is not None
    assert manager.get("no-such-run") is None


def test_stats_count_runs_and_durations() -> None:
    clock = FakeClock()

    def fetch(budget: runs.Budget) -> Mapping[str, Any]:
        clock.advance(3)
        return {}

    manager = manager_with({"fetch": fetch, "process": lambda budget: {}}, clock=clock)
    finished(manager, manager.start("fetch"))
    finished(manager, manager.start("fetch"))
    stats = manager.stats()
    assert stats.finished == {("fetch", "succeeded"): 2}
    assert stats.duration_sum == {"fetch": 6.0} and stats.duration_count == {"fetch": 2}
    assert stats.running == {"fetch": 0, "process": 0}
    assert set(stats.last_success) == {"fetch"}


def test_shutdown_tells_runs_to_stop_and_refuses_new_ones() -> None:
    entered = threading.Event()

    def process(budget: runs.Budget) -> Mapping[str, Any]:
        entered.set()
        claimed = 0
        # Claims until told to stop; a real run would finish its in-flight jobs here.
        while not budget.expired():
            claimed += 1
            budget.stop_event.wait(0.01)
        return {"claimed": claimed}

    manager = manager_with({"process": process}, budget_seconds=3600)
    record = manager.start("process")
    assert record is not None and entered.wait(WAIT)
    assert manager.shutdown(grace_seconds=WAIT) is True
    done = manager.get(record.id)
    assert done is not None and done.status == "succeeded"
    assert done.stop_requested and not done.budget_exhausted
    assert manager.stopping
    with pytest.raises(runs.ShuttingDown):
        manager.start("process")


def test_shutdown_reports_a_run_that_ignores_the_stop() -> None:
    gate = Gate()
    manager = manager_with({"fetch": gate})
    record = manager.start("fetch")
    assert record is not None and gate.entered.wait(WAIT)
    assert manager.shutdown(grace_seconds=0.0) is False
    gate.release.set()
    assert finished(manager, record).stop_requested
