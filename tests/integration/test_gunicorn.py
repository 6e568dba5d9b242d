"""The image's command and the app's configuration agree: gunicorn started exactly as the
Dockerfile's CMD (with fly.toml's port) serves the app against a real database.

Docker cannot build on the test machine, so this reads the Dockerfile and fly.toml and runs the
same command in the project's virtualenv.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import DictRow

from worker import runs

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECRET = "integration-secret-0123456789"
START_WAIT = 60.0  # seconds; bounds a hung start-up, never asserted on
RUN_WAIT = 60.0
STOP_WAIT = 60.0


def dockerfile_instructions() -> dict[str, list[str]]:
    """Instruction -> argument texts, with backslash continuations joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.setdefault(word.upper(), []).append(rest.strip())
    return found


def docker_cmd() -> list[str]:
    cmds = dockerfile_instructions()["CMD"]
    assert len(cmds) == 1
    argv = json.loads(cmds[0])  # exec form: no shell between the signal and gunicorn
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


def fly_config() -> dict[str, Any]:
    with (ROOT / "fly.toml").open("rb") as f:
        return tomllib.load(f)


def test_dockerfile_and_fly_toml_agree_on_port_health_and_command() -> None:
    fly = fly_config()
    port = fly["http_service"]["internal_port"]
    instructions = dockerfile_instructions()
    assert docker_cmd() == [
        "gunicorn",
        "-c",
        "worker/gunicorn_conf.py",
        "worker.app:create_app()",
    ]
    assert instructions["FROM"] == ["python:3.11-slim"]
    assert instructions["EXPOSE"] == [str(port)]
    assert any(f"PORT={port}" in env.split() for env in instructions["ENV"])
    assert fly["env"]["PORT"] == str(port)
    assert instructions["USER"] and instructions["USER"][0] not in ("root", "0")
    assert "/healthz" in instructions["HEALTHCHECK"][0]
    assert any("requirements.lock" in run for run in instructions["RUN"])
    assert instructions.get("STOPSIGNAL") == ["SIGTERM"]
    checks = fly["http_service"]["checks"]
    assert [(c["method"], c["path"]) for c in checks] == [("GET", "/healthz")]
    assert fly["kill_signal"] == "SIGTERM"


def test_fly_keeps_one_machine_running() -> None:
    # Runs continue after their 202 with no request in flight; Fly's proxy stops a lone machine
    # whose load is 0, so autostop would cut runs short (fly.toml explains the choice).
    service = fly_config()["http_service"]
    assert service["auto_stop_machines"] in ("off", False)
    assert service["min_machines_running"] >= 1
    assert service["auto_start_machines"] is True


def test_gunicorn_config_defaults_to_fly_port_and_gives_runs_time_to_stop() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PORT"}
    code = (
        "import runpy, json; c = runpy.run_path('worker/gunicorn_conf.py'); "
        "print(json.dumps({k: c[k] for k in ('bind', 'workers', 'worker_class', 'threads', "
        "'graceful_timeout', 'timeout')}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout
    conf = json.loads(out)
    assert conf["bind"] == f"0.0.0.0:{fly_config()['http_service']['internal_port']}"
    # One process (the run guard is per process), threads gathered only for complete heads.
    assert conf["workers"] == 1 and conf["worker_class"] == "worker.http_worker.ThreadWorker"
    assert conf["graceful_timeout"] > runs.SHUTDOWN_GRACE_SECONDS
    kill_timeout = int(fly_config()["kill_timeout"].rstrip("s"))
    assert kill_timeout > conf["graceful_timeout"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


def request(port: int, method: str, path: str, token: str | None = None) -> Reply:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = b"{}" if method == "POST" else None  # what pg_net sends
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return Reply(resp.status, resp.read(), dict(resp.headers))
    except urllib.error.HTTPError as err:
        return Reply(err.code, err.read(), dict(err.headers))


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def gunicorn_server(database_url: str, tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    argv = docker_cmd()
    argv[0] = str(Path(sys.executable).with_name(argv[0]))  # the venv's gunicorn
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PORT": str(port),
        "DATABASE_URL": database_url,
        "WORKER_SECRET": SECRET,
        "LOG_LEVEL": "INFO",
        "RUN_BUDGET_SECONDS": "20",
    }
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(port, process, log)
    try:
        deadline = time.monotonic() + START_WAIT
        while True:
            assert process.poll() is None, f"gunicorn exited:\n{log.read_text()}"
            try:
                if request(port, "GET", "/healthz").status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"gunicorn never answered:\n{log.read_text()}"
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_an_idle_worker_never_exits(database_url: str, tmp_path: Path) -> None:
    # The design keeps the machine running, so nothing in the app may end the process when idle:
    # gunicorn with a 2 s worker timeout sits idle for three timeouts and is the same worker after.
    port = free_port()
    argv = [*docker_cmd(), "--timeout", "2"]
    argv[0] = str(Path(sys.executable).with_name(argv[0]))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PORT": str(port),
        "DATABASE_URL": database_url,
        "WORKER_SECRET": SECRET,
    }
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_WAIT
        while True:
            try:
                if request(port, "GET", "/healthz").status == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        time.sleep(6)
        assert process.poll() is None, log.read_text()
        assert request(port, "GET", "/healthz").status == 200
        boots = [line for line in log.read_text().splitlines() if "Booting worker" in line]
        assert len(boots) == 1, log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_run(port: int, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + RUN_WAIT
    while True:
        reply = request(port, "GET", f"/runs/{run_id}", SECRET)
        assert reply.status == 200
        record: dict[str, Any] = reply.json()
        if record["status"] != "running":
            return record
        assert time.monotonic() < deadline, f"run {run_id} still running"
        time.sleep(0.1)


def test_gunicorn_serves_the_app_with_the_image_command(
    gunicorn_server: Server, db: psycopg.Connection[DictRow]
) -> None:
    port = gunicorn_server.port

    health = request(port, "GET", "/healthz")
    assert health.status == 200 and health.json() == {"status": "ok"}
    ready = request(port, "GET", "/readyz")
    assert ready.status == 200, ready.body

    for path in ("/fetch-emails", "/process-queue"):
        assert request(port, "POST", path).status == 401
        assert request(port, "POST", path, "wrong-token-0123456789").status == 401

    started = request(port, "POST", "/fetch-emails", SECRET)
    assert started.status == 202
    body = started.json()
    assert body["kind"] == "fetch" and body["status"] == "started"
    record = wait_for_run(port, body["run_id"])
    assert record["status"] == "succeeded", record

    assert request(port, "GET", "/metrics").status == 401  # the bearer token is required
    metrics = request(port, "GET", "/metrics", SECRET)
    assert metrics.status == 200
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    lines = metrics.body.decode().splitlines()
    assert "support_worker_queue_stats_up 1.0" in lines
    assert 'support_worker_runs_total{kind="fetch",status="succeeded"} 1.0' in lines

    # A graceful stop: SIGTERM, the worker_exit hook stops the runs, gunicorn exits 0.
    gunicorn_server.process.send_signal(signal.SIGTERM)
    assert gunicorn_server.process.wait(STOP_WAIT) == 0
    log = gunicorn_server.log.read_text()
    # Every line, gunicorn's own included, is one JSON object (worker/logs.py).
    records = [json.loads(line) for line in log.splitlines()]
    summaries = [r for r in records if r.get("event") == "run.finished"]
    # Exactly one summary line for our run (a fetch that stored mail may chain a process run).
    assert [s["kind"] for s in summaries if s["run_id"] == body["run_id"]] == ["fetch"]
    assert "background runs finished" in log
    assert "Control socket" not in log  # disabled: parallel servers would share its path
    access = [r["message"] for r in records if r["logger"] == "gunicorn.access"]
    assert any('"POST /fetch-emails HTTP/1.1" 202' in m for m in access)  # access log on stdout
    # The tick made a fetch job for every active store of this shared database, other tests'
    # stores too; those whose mailbox fails wait for a retry. Leave none for later tests' runs.
    db.execute(
        "delete from public.job_queue where job_type = 'fetch_mailbox' and status = 'pending'"
    )


SLOW_CLIENTS = 16  # twice the worker's threads
SLOW_LINE_SECONDS = 1.0  # a header line this often: the request is never complete
PROMPT_SECONDS = 5.0  # "answers promptly" on a loaded 2-core box; blocked, it waited > 10 s


def timed_request(port: int, method: str, path: str, token: str | None = None) -> float:
    started = time.monotonic()
    reply = request(port, method, path, token)
    took = time.monotonic() - started
    assert reply.status in (200, 202, 409), reply.body
    return took


def test_slow_clients_do_not_block_health_or_the_triggers(gunicorn_server: Server) -> None:
    """Connections that send one header line at a time (slowloris) hold no worker thread."""
    port = gunicorn_server.port
    stop = threading.Event()
    slow: list[socket.socket] = []

    def trickle(sock: socket.socket) -> None:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            n = 0
            while not stop.wait(SLOW_LINE_SECONDS):
                n += 1
                sock.sendall(f"X-Slow-{n}: y\r\n".encode())
        except OSError:
            pass  # the server hung up on us: what it should eventually do

    threads = []
    for _ in range(SLOW_CLIENTS):
        sock = socket.create_connection(("127.0.0.1", port))
        slow.append(sock)
        threads.append(threading.Thread(target=trickle, args=(sock,), daemon=True))
    try:
        for t in threads:
            t.start()
        time.sleep(2 * SLOW_LINE_SECONDS)  # every slow client is mid-request
        health = [timed_request(port, "GET", "/healthz") for _ in range(5)]
        trigger = timed_request(port, "POST", "/process-queue", SECRET)
        assert max(health) < PROMPT_SECONDS, health
        assert trigger < PROMPT_SECONDS, trigger
    finally:
        stop.set()
        for sock in slow:
            sock.close()
