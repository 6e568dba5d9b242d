"""The worker's HTTP face: triggers for pg_net, health, readiness, metrics and run records.

pg_net waits only a couple of seconds for an answer, so a trigger starts a background run and
answers 202 at once. A second trigger while a run of that kind is going answers 409 with the
running run's id (409 rather than 200: nothing was started, and pg_net only logs the status).
Request bodies are ignored (pg_net sends '{}').
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TextIO

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from worker import logs, metrics, runs, shopify_versions
from worker.config import Settings, load_settings

logger = logging.getLogger(__name__)

bp = Blueprint("worker", __name__)

EXTENSION_KEY = "support_worker"
TRIGGER_KINDS = {"/fetch-emails": "fetch", "/process-queue": "process"}


class Database(Protocol):
    """What the app needs from the database client."""

    def ping(self) -> object:
        """Raise when the database cannot be reached."""
        ...

    def queue_stats(self) -> Mapping[str, Any]:
        """The JSON of the `queue_stats()` SQL function."""
        ...

    def model_usage_stats(self, hours: int = 1) -> list[dict[str, Any]]:
        """The JSON of the `model_usage_stats()` SQL function."""
        ...


class Services(Protocol):
    """What `worker.services.build_services(settings)` must return (and tests fake)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def db(self) -> Database: ...

    @property
    def runners(self) -> Mapping[str, runs.Runner]: ...


ServicesFactory = Callable[[Settings], Services]


def load_services(settings: Settings) -> Services:
    """The real services from `worker.services.build_services` (imported on first use)."""
    # Imported at first use: worker/services.py pulls in every I/O client, and the app must
    # import and answer /healthz even when building them fails.
    from worker.services import build_services

    return build_services(settings)


class LazyServices:
    """Builds the services once, on first use; a failed build is retried on the next use."""

    def __init__(
        self, settings: Settings, factory: ServicesFactory, *, built: Services | None = None
    ) -> None:
        self._settings = settings
        self._factory = factory
        self._lock = threading.Lock()
        self._services = built

    def get(self) -> Services:
        """The services, building them if needed (raises what the build raises)."""
        with self._lock:
            if self._services is None:
                self._services = self._factory(self._settings)
            return self._services

    def close(self) -> None:
        """Close the services if they were built and can be closed."""
        with self._lock:
            close = getattr(self._services, "close", None)
        if callable(close):
            close()


@dataclasses.dataclass(frozen=True)
class WorkerState:
    """Per-app state kept in `app.extensions`."""

    settings: Settings
    services: LazyServices
    manager: runs.RunManager
    metrics: metrics.Metrics


def _deferred_runner(services: LazyServices, kind: str) -> runs.Runner:
    # Resolved inside the run's thread, so a services build failure (database down at boot)
    # becomes a failed run with the error recorded, not a crashed request.
    def run(budget: runs.Budget) -> Mapping[str, Any]:
        return services.get().runners[kind](budget)

    return run


def configure_logging(level: str, stream: TextIO | None = None) -> None:
    """JSON lines to `stream` (stdout) at `level` (see worker/logs.py)."""
    logs.configure(level, stream)


def warn_about_settings(settings: Settings) -> None:
    """Log one line per setting that works today but is going away (e.g. Shopify's version)."""
    warning = shopify_versions.support_warning(settings.shopify_api_version)
    if warning:
        logger.warning(warning)


def create_app(
    settings: Settings | None = None,
    *,
    services: Services | None = None,
    services_factory: ServicesFactory | None = None,
) -> Flask:
    """Build the Flask app; settings default to the environment, services are built lazily."""
    if settings is None:
        settings = services.settings if services is not None else load_settings()
    configure_logging(settings.log_level)
    warn_about_settings(settings)
    lazy = LazyServices(settings, services_factory or load_services, built=services)
    manager = runs.RunManager(
        {kind: _deferred_runner(lazy, kind) for kind in TRIGGER_KINDS.values()},
        budget_seconds=settings.run_budget_seconds,
    )
    manager.on_finish.append(runs.start_process_after_fetch)

    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    collected = metrics.Metrics(_queue_stats_reader(lazy), manager.stats, _model_usage_reader(lazy))
    app.extensions[EXTENSION_KEY] = WorkerState(settings, lazy, manager, collected)
    app.before_request(_start_timer)
    app.after_request(_count_request)
    app.register_blueprint(bp)
    if settings.console_enabled:
        from worker.console.web import register_console

        register_console(app, settings, lambda: lazy.get().db)  # type: ignore[return-value,arg-type]
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _queue_stats_reader(services: LazyServices) -> metrics.QueueStats:
    def read() -> Mapping[str, Any] | None:
        try:
            return services.get().db.queue_stats()
        except Exception as exc:
            logger.warning("queue_stats failed for /metrics: %s: %s", type(exc).__name__, exc)
            return None

    return read


def _model_usage_reader(services: LazyServices) -> metrics.ModelUsageStats:
    def read() -> list[dict[str, Any]] | None:
        try:
            return services.get().db.model_usage_stats(1)
        except Exception as exc:
            logger.warning("model_usage_stats failed for /metrics: %s: %s", type(exc).__name__, exc)
            return None

    return read


def _start_timer() -> None:
    g.request_started = time.perf_counter()


def _count_request(response: Response) -> Response:
    # The route pattern, not the path: /runs/<run_id> is one label value, and a scan of random
    # paths cannot grow the label set.
    rule = request.url_rule.rule if request.url_rule is not None else "other"
    started = g.get("request_started", time.perf_counter())
    _state().metrics.observe(request.method, rule, response.status_code, started)
    return response


def get_state(app: Flask) -> WorkerState:
    """The worker state of an app built by create_app()."""
    state: WorkerState = app.extensions[EXTENSION_KEY]
    return state


def shutdown(app: Flask, grace_seconds: float = runs.SHUTDOWN_GRACE_SECONDS) -> bool:
    """Tell running runs to stop claiming, wait for them, close services; True if all ended."""
    state = get_state(app)
    finished = state.manager.shutdown(grace_seconds)
    try:
        state.services.close()
    except Exception:
        logger.exception("closing services failed")
    return finished


def _state() -> WorkerState:
    return get_state(current_app)


def _error(status: int, error: str, message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify({"error": error, "message": message, **extra}), status


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    name = (exc.name or "error").lower().replace(" ", "_")
    return _error(exc.code or 500, name, exc.description or name)


def _unexpected_error(exc: Exception) -> tuple[Response, int]:
    logger.exception("unhandled error on %s %s", request.method, request.path)
    return _error(500, "internal_error", "unexpected error; see the worker logs")


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def is_authorized(header: str | None, secret: str | None) -> bool:
    """Constant-time check of the bearer token against WORKER_SECRET (never true without one)."""
    token = bearer_token(header)
    if not secret or token is None:
        return False
    return hmac.compare_digest(token.encode(), secret.encode())


def _unauthorized() -> tuple[Response, int]:
    response, status = _error(401, "unauthorized", "missing or wrong bearer token")
    response.headers["WWW-Authenticate"] = 'Bearer realm="worker"'
    return response, status


def _require_auth() -> tuple[Response, int] | None:
    if is_authorized(request.headers.get("Authorization"), _state().settings.worker_secret):
        return None
    return _unauthorized()


def _trigger(kind: str) -> tuple[Response, int]:
    denied = _require_auth()
    if denied is not None:
        return denied
    try:
        record, started = _state().manager.trigger(kind)
    except runs.ShuttingDown:
        return _error(503, "shutting_down", "the worker is shutting down; retry later")
    if not started:
        return jsonify(
            {
                "run_id": record.id,
                "kind": kind,
                "status": "already_running",
                "started_at": record.started_at.isoformat(),
            }
        ), 409
    response = jsonify({"run_id": record.id, "kind": kind, "status": "started"})
    response.headers["Location"] = f"/runs/{record.id}"
    return response, 202


@bp.post("/fetch-emails")
def fetch_emails() -> tuple[Response, int]:
    """Start a fetch run in the background."""
    return _trigger("fetch")


@bp.post("/process-queue")
def process_queue() -> tuple[Response, int]:
    """Start a process run in the background."""
    return _trigger("process")


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """Alive: the process answers; touches no dependency."""
    return jsonify({"status": "ok"}), 200


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready: the database answers."""
    try:
        _state().services.get().db.ping()
    except Exception as exc:
        # The probe is unauthenticated: the details go to the log, only the type to the caller.
        logger.warning("readiness check failed: %s: %s", type(exc).__name__, exc)
        return jsonify({"status": "unavailable", "error": type(exc).__name__}), 503
    return jsonify({"status": "ready"}), 200


@bp.get("/metrics")
def metrics_endpoint() -> Response | tuple[Response, int]:
    """Prometheus exposition (bearer token required): process, requests, queue and runs."""
    denied = _require_auth()
    if denied is not None:
        return denied
    body, content_type = metrics.exposition(
        _state().metrics.registry, request.headers.get("Accept")
    )
    return Response(body, status=200, content_type=content_type)


@bp.get("/runs/<run_id>")
def get_run(run_id: str) -> tuple[Response, int]:
    """The record of a recent run of this container."""
    denied = _require_auth()
    if denied is not None:
        return denied
    record = _state().manager.get(run_id)
    if record is None:
        return _error(404, "not_found", f"no run {run_id} in this container's recent history")
    return jsonify(record.to_dict()), 200
