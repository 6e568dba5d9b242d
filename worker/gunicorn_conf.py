"""Gunicorn settings: `gunicorn -c worker/gunicorn_conf.py 'worker.app:create_app()'`.

Sizing and timeouts follow from how the app works: a trigger answers at once and its run goes on
in a background thread of the same process.
"""

from __future__ import annotations

import os
from typing import Any

from worker import logs, runs

# PORT is the one variable read here rather than in worker.config: gunicorn binds before the app
# (and its Settings) is loaded. The default matches Settings.port and fly.toml's internal_port.
bind = f"0.0.0.0:{os.environ.get('PORT') or 8080}"

# One process: the single-run guard (one fetch run and one process run at a time) lives in the
# process's memory, so two processes could run two fetches at once. Concurrency comes from
# threads: requests are short, and the runs' own I/O fan-out is inside the run (its own pools).
workers = 1
# gthread, except that a thread is committed to a connection only once its request head has
# arrived (worker/http_worker.py): slow clients cannot hold the threads the triggers need.
worker_class = "worker.http_worker.ThreadWorker"
threads = 8

# Requests never wait for a run, so the request timeout can be far below RUN_BUDGET_SECONDS
# (110 s): gthread's main loop keeps heart-beating while background threads work. On shutdown,
# graceful_timeout must exceed the run manager's grace period so a run that was told to stop
# can finish its in-flight jobs before the master kills the worker; fly.toml's kill_timeout is
# set above this again.
timeout = 30  # seconds
graceful_timeout = int(runs.SHUTDOWN_GRACE_SECONDS) + 10  # seconds; gunicorn wants an int
keepalive = 5  # seconds

accesslog = "-"  # stdout, where fly collects logs
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# gunicorn's own lines are JSON like the app's (worker/logs.py).
logconfig_dict = logs.gunicorn_logconfig(loglevel)

# The heartbeat file on tmpfs: gunicorn's advice for containers, where /tmp may be a slow overlay.
_SHM = "/dev/shm"  # noqa: S108 - gunicorn creates its file there with mkstemp
worker_tmp_dir = _SHM if os.path.isdir(_SHM) else None

# No control socket (gunicorn >= 25): nothing manages the container at run time, the non-root
# user has no home to put it in, and side-by-side test servers would share its default path.
control_socket_disable = True

# Loading the app in the worker (no preload) keeps the run manager and its threads out of the
# master, which forks; hooks below therefore act in the worker process.
preload_app = False


def _shutdown_runs(worker: Any, grace_seconds: float) -> None:
    from flask import Flask

    from worker.app import shutdown

    app = getattr(worker, "wsgi", None)
    if isinstance(app, Flask):
        finished = shutdown(app, grace_seconds)
        worker.log.info("background runs %s", "finished" if finished else "left unfinished")


def worker_exit(server: Any, worker: Any) -> None:
    """Graceful stop (SIGTERM): runs stop claiming and get the grace period to end cleanly."""
    _shutdown_runs(worker, runs.SHUTDOWN_GRACE_SECONDS)


def worker_int(worker: Any) -> None:
    """Quick stop (SIGINT/SIGQUIT): tell runs to stop, with a short grace before exiting."""
    _shutdown_runs(worker, 2.0)


def on_exit(server: Any) -> None:
    """Master exit: the runs live in the worker (no preload), so only record the stop."""
    server.log.info("gunicorn master exiting; unfinished jobs keep their leases")
