"""The Flask app with fake services (Flask's test client), and the command line entry point."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from worker import __main__ as cli
from worker import app as app_module
from worker import metrics, runs
from worker.config import Settings
from worker.errors import DatabaseError

SECRET = "test-secret-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {SECRET}"}
WAIT = 10.0  # seconds; bounds a hung test, never an assertion about speed
ENV = {"DATABASE_URL": "postgresql://postgres:postgres@127.0.0.1:5448/postgres"}


class FakeDb:
    def __init__(self) -> None:
        self.down = False
        self.stats: Mapping[str, Any] = {
            "jobs": [{"job_type": "process_email", "status": "pending", "count": 3}],
            "oldest_due_seconds": {"process_email": 12},
            "breakers": [{"service": "smtp:store-1", "state": "open"}],
        }

    def ping(self) -> bool:
        if self.down:
            raise DatabaseError("connection refused")
        return True

    def queue_stats(self) -> Mapping[str, Any]:
        if self.down:
            raise DatabaseError("connection refused")
        return self.stats


@dataclasses.dataclass
class FakeServices:
    settings: Settings
    db: FakeDb
    runners: dict[str, runs.Runner]
    closed: bool = False

    def close(self) -> None:
        self.closed = True


class Gate:
    """A runner that blocks until released."""

    def __init__(self, summary: Mapping[str, Any]) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self.summary = summary

    def __call__(self, budget: runs.Budget) -> Mapping[str, Any]:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(WAIT)
        return self.summary


def settings(**changes: Any) -> Settings:
    base = Settings(database_url=ENV["DATABASE_URL"], worker_secret=SECRET, run_budget_seconds=110)
    return dataclasses.replace(base, **changes)


@pytest.fixture
def services() -> FakeServices:
    return FakeServices(
        settings=settings(),
        db=FakeDb(),
        runners={
            "fetch": lambda budget: {"stores": 2, "stored": 0},
            "process": lambda budget: {"processed": 1},
        },
    )


@pytest.fixture
def app(services: FakeServices) -> Iterator[Flask]:
    flask_app = app_module.create_app(services.settings, services=services)
    yield flask_app
    app_module.shutdown(flask_app, grace_seconds=WAIT)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def wait_run(app: Flask, run_id: str) -> runs.RunRecord:
    record = app_module.get_state(app).manager.wait(run_id, WAIT)
    assert record is not None and record.status != "running"
    return record


# Auth


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-secret-0123456789"},
        {"Authorization": f"Bearer {SECRET}x"},
        {"Authorization": f"Basic {SECRET}"},
        {"Authorization": "Bearer "},
        {"Authorization": SECRET},
    ],
)
@pytest.mark.parametrize("path", ["/fetch-emails", "/process-queue"])
def test_triggers_refuse_missing_or_wrong_tokens_and_do_no_work(
    app: Flask, client: FlaskClient, path: str, headers: dict[str, str]
) -> None:
    response = client.post(path, headers=headers, json={})
    assert response.status_code == 401
    assert response.is_json and response.get_json()["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    stats = app_module.get_state(app).manager.stats()
    assert stats.running == {"fetch": 0, "process": 0} and stats.finished == {}


def test_no_configured_secret_refuses_everything(services: FakeServices) -> None:
    flask_app = app_module.create_app(settings(worker_secret=None), services=services)
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
        assert flask_app.test_client().post("/fetch-emails", headers=headers).status_code == 401


def test_bearer_scheme_is_case_insensitive(client: FlaskClient) -> None:
    response = client.post("/process-queue", headers={"Authorization": f"bearer {SECRET}"})
    assert response.status_code == 202


# The 202 contract


@pytest.mark.parametrize(
    ("path", "kind"), [("/fetch-emails", "fetch"), ("/process-queue", "process")]
)
def test_trigger_answers_202_with_the_run_id_and_the_run_completes(
    app: Flask, client: FlaskClient, path: str, kind: str
) -> None:
    response = client.post(path, headers=AUTH, data="{}", content_type="application/json")
    assert response.status_code == 202
    body = response.get_json()
    assert set(body) == {"run_id", "kind", "status"}
    assert body["kind"] == kind and body["status"] == "started"
    assert response.headers["Location"] == f"/runs/{body['run_id']}"
    assert wait_run(app, body["run_id"]).status == "succeeded"


def test_trigger_answers_before_the_run_ends(
    app: Flask, client: FlaskClient, services: FakeServices
) -> None:
    gate = Gate({"processed": 9})
    services.runners["process"] = gate
    response = client.post("/process-queue", headers=AUTH)
    assert response.status_code == 202
    run_id = response.get_json()["run_id"]
    assert gate.entered.wait(WAIT)
    running = client.get(f"/runs/{run_id}", headers=AUTH).get_json()
    assert running["status"] == "running" and running["finished_at"] is None
    gate.release.set()
    wait_run(app, run_id)
    done = client.get(f"/runs/{run_id}", headers=AUTH).get_json()
    assert done["status"] == "succeeded" and done["summary"] == {"processed": 9}


def test_request_bodies_are_ignored(app: Flask, client: FlaskClient) -> None:
    response = client.post("/fetch-emails", headers=AUTH, data="not json", content_type="text/x")
    assert response.status_code == 202
    wait_run(app, response.get_json()["run_id"])


# The single-run guard


def test_second_trigger_while_running_answers_409_with_the_running_id(
    app: Flask, client: FlaskClient, services: FakeServices
) -> None:
    gate = Gate({"stores": 1, "stored": 0})
    services.runners["fetch"] = gate
    first = client.post("/fetch-emails", headers=AUTH)
    assert first.status_code == 202 and gate.entered.wait(WAIT)
    run_id = first.get_json()["run_id"]

    second = client.post("/fetch-emails", headers=AUTH)
    assert second.status_code == 409
    body = second.get_json()
    assert body["run_id"] == run_id and body["status"] == "already_running"
    assert body["kind"] == "fetch"
    # The other kind is not blocked.
    other = client.post("/process-queue", headers=AUTH)
    assert other.status_code == 202
    wait_run(app, other.get_json()["run_id"])

    gate.release.set()
    wait_run(app, run_id)
    assert gate.calls == 1
    third = client.post("/fetch-emails", headers=AUTH)
    assert third.status_code == 202 and third.get_json()["run_id"] != run_id
    gate_record = wait_run(app, third.get_json()["run_id"])
    assert gate_record.status == "succeeded"


# The budget


def test_runner_that_checks_the_budget_stops_and_the_run_shows_it(
    services: FakeServices,
) -> None:
    def process(budget: runs.Budget) -> Mapping[str, Any]:
        processed = 0
        while not budget.expired():
            processed += 1
            time.sleep(0.005)
        return {"processed": processed}

    services.runners["process"] = process
    flask_app = app_module.create_app(settings(run_budget_seconds=0.05), services=services)
    client = flask_app.test_client()
    run_id = client.post("/process-queue", headers=AUTH).get_json()["run_id"]
    wait_run(flask_app, run_id)
    record = client.get(f"/runs/{run_id}", headers=AUTH).get_json()
    assert record["status"] == "succeeded"
    assert record["budget_exhausted"] is True and record["budget_seconds"] == 0.05
    assert record["summary"]["processed"] >= 1
    assert record["duration_seconds"] >= 0.05


# Failures


def test_runner_that_raises_ends_failed_and_the_app_stays_up(
    app: Flask, client: FlaskClient, services: FakeServices
) -> None:
    def fetch(budget: runs.Budget) -> Mapping[str, Any]:
        raise RuntimeError("imap exploded")

    services.runners["fetch"] = fetch
    run_id = client.post("/fetch-emails", headers=AUTH).get_json()["run_id"]
    assert wait_run(app, run_id).status == "failed"
    record = client.get(f"/runs/{run_id}", headers=AUTH).get_json()
    assert record["errors"] == [{"type": "RuntimeError", "message": "imap exploded"}]
    assert client.get("/healthz").status_code == 200
    again = client.post("/fetch-emails", headers=AUTH)
    assert again.status_code == 202
    wait_run(app, again.get_json()["run_id"])


def test_services_build_failure_fails_the_run_not_the_request() -> None:
    def factory(s: Settings) -> app_module.Services:
        raise DatabaseError("database is starting up")

    flask_app = app_module.create_app(settings(), services_factory=factory)
    client = flask_app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    response = client.post("/process-queue", headers=AUTH)
    assert response.status_code == 202
    record = wait_run(flask_app, response.get_json()["run_id"])
    assert record.status == "failed" and record.errors[0]["type"] == "DatabaseError"
    assert record.errors[0]["error_type"] == "transient"


def test_fetch_that_stored_mail_chains_a_process_run(
    app: Flask, client: FlaskClient, services: FakeServices
) -> None:
    processed = threading.Event()

    def process(budget: runs.Budget) -> Mapping[str, Any]:
        processed.set()
        return {"processed": 4}

    services.runners["fetch"] = lambda budget: {"stores": 1, "stored": 4}
    services.runners["process"] = process
    run_id = client.post("/fetch-emails", headers=AUTH).get_json()["run_id"]
    wait_run(app, run_id)
    assert processed.wait(WAIT)


# Health, readiness, runs, errors


def test_healthz_needs_no_services() -> None:
    def factory(s: Settings) -> app_module.Services:
        raise AssertionError("healthz must not build services")

    client = app_module.create_app(settings(), services_factory=factory).test_client()
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_readyz_follows_the_database(client: FlaskClient, services: FakeServices) -> None:
    assert client.get("/readyz").status_code == 200
    services.db.down = True
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "error": "DatabaseError"}


def test_runs_endpoint_requires_auth_and_404s_unknown_ids(client: FlaskClient) -> None:
    assert client.get("/runs/whatever").status_code == 401
    response = client.get("/runs/whatever", headers=AUTH)
    assert response.status_code == 404 and response.get_json()["error"] == "not_found"


def test_errors_are_json(client: FlaskClient) -> None:
    wrong_method = client.get("/fetch-emails", headers=AUTH)
    assert wrong_method.status_code == 405 and wrong_method.is_json
    assert wrong_method.get_json()["error"] == "method_not_allowed"
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.get_json()["error"] == "not_found"


def test_trigger_after_shutdown_answers_503(app: Flask, services: FakeServices) -> None:
    assert app_module.shutdown(app, grace_seconds=WAIT) is True
    assert services.closed
    response = app.test_client().post("/fetch-emails", headers=AUTH)
    assert response.status_code == 503 and response.get_json()["error"] == "shutting_down"


# Metrics


def test_metrics_expose_queue_stats_and_run_counters(app: Flask, client: FlaskClient) -> None:
    run_id = client.post("/fetch-emails", headers=AUTH).get_json()["run_id"]
    wait_run(app, run_id)
    client.get("/healthz")
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == metrics.CONTENT_TYPE
    text = response.get_data(as_text=True)
    lines = set(text.splitlines())
    p = metrics.PREFIX
    assert f"{p}queue_stats_up 1.0" in lines
    assert f'{p}queue_jobs{{job_type="process_email",status="pending"}} 3.0' in lines
    assert f'{p}queue_oldest_due_seconds{{job_type="process_email"}} 12.0' in lines
    # Breakers are counted per kind of service: the page names no store.
    assert f'{p}circuit_breakers{{service="smtp",state="open"}} 1.0' in lines
    assert "store-1" not in text
    assert f'{p}runs_total{{kind="fetch",status="succeeded"}} 1.0' in lines
    assert f"# TYPE {p}run_duration_seconds summary" in lines
    # Process and request metrics from prometheus-client.
    assert any(line.startswith("process_resident_memory_bytes ") for line in lines)
    assert (
        f'{p}http_requests_total{{endpoint="/fetch-emails",method="POST",status="202"}} 1.0'
        in lines
    )
    assert f'{p}http_requests_total{{endpoint="/healthz",method="GET",status="200"}} 1.0' in lines


def test_metrics_require_the_bearer_token(client: FlaskClient) -> None:
    assert client.get("/metrics").status_code == 401
    wrong = {"Authorization": "Bearer not-the-worker-secret-at-all"}
    assert client.get("/metrics", headers=wrong).status_code == 401


def test_unknown_paths_share_one_label(client: FlaskClient) -> None:
    client.get("/no-such-page-1")
    client.get("/no-such-page-2")
    text = client.get("/metrics", headers=AUTH).get_data(as_text=True)
    assert "no-such-page" not in text
    p = metrics.PREFIX
    assert f'{p}http_requests_total{{endpoint="other",method="GET",status="404"}} 2.0' in text


def test_metrics_still_answer_when_the_database_is_down(
    client: FlaskClient, services: FakeServices
) -> None:
    services.db.down = True
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert f"{metrics.PREFIX}queue_stats_up 0.0" in text.splitlines()
    assert f'{metrics.PREFIX}runs_in_progress{{kind="fetch"}} 0.0' in text


# Command line


def cli_factory(runners: dict[str, runs.Runner]) -> Callable[[Settings], app_module.Services]:
    def factory(s: Settings) -> app_module.Services:
        return FakeServices(settings=s, db=FakeDb(), runners=runners)

    return factory


def test_cli_fetch_prints_the_summary_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    budgets: list[float] = []

    def fetch(budget: runs.Budget) -> Mapping[str, Any]:
        budgets.append(budget.seconds)
        return {"stores": 2, "stored": 5}

    code = cli.main(
        ["fetch", "--budget", "7"], services_factory=cli_factory({"fetch": fetch}), environ=ENV
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["kind"] == "fetch" and printed["status"] == "succeeded"
    assert printed["summary"] == {"stores": 2, "stored": 5}
    assert budgets == [7.0]


def test_cli_process_uses_the_configured_budget_and_exits_1_on_failure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    budgets: list[float] = []

    def process(budget: runs.Budget) -> Mapping[str, Any]:
        budgets.append(budget.seconds)
        raise RuntimeError("boom")

    code = cli.main(
        ["process"],
        services_factory=cli_factory({"process": process}),
        environ={**ENV, "RUN_BUDGET_SECONDS": "42"},
    )
    assert code == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["status"] == "failed" and printed["errors"][0]["message"] == "boom"
    assert budgets == [42.0]


def test_cli_sigterm_makes_the_foreground_run_stop_claiming(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def process(budget: runs.Budget) -> Mapping[str, Any]:
        os.kill(os.getpid(), signal.SIGTERM)  # what `docker stop` or Ctrl-C would do
        claimed = 0
        while not budget.expired():
            claimed += 1
            budget.stop_event.wait(0.01)
        return {"claimed": claimed}

    previous = signal.getsignal(signal.SIGTERM)
    code = cli.main(["process"], services_factory=cli_factory({"process": process}), environ=ENV)
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["stop_requested"] is True and printed["budget_exhausted"] is False
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler was restored


def test_cli_reports_configuration_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["fetch"], services_factory=cli_factory({}), environ={}) == 2
    assert "DATABASE_URL" in capsys.readouterr().err


def test_cli_delegates_stores_to_worker_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("worker.stores")
    fake.main = lambda argv: seen.append(argv) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "worker.stores", fake)
    assert cli.main(["stores", "list", "--active"]) == 0
    assert seen == [["list", "--active"]]


def test_cli_requires_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2
