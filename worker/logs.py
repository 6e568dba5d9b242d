"""Logging set-up: one JSON object per line on stdout (python-json-logger), tracebacks included.

Every record is `{"time", "level", "logger", "message", ...}` plus the fields passed as `extra`,
so the run summary (`event: run.finished`) is one line a log pipeline can filter on. The client
libraries below log whole emails, prompts, order data or request headers at DEBUG, so they stay
at INFO or above whatever LOG_LEVEL says.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

# Loggers of libraries that put message bodies, prompts or credentials into DEBUG records.
THIRD_PARTY_LOGGERS = (
    "imapclient",
    "anthropic",
    "httpx",
    "httpcore",
    "httpx2",
    "httpcore2",
    "hpack",
    "h2",
    "urllib3",
    "postgrest",
    "supabase",
    "supabase_auth",
    "realtime",
    "websockets",
    "psycopg",
)
THIRD_PARTY_FLOOR = logging.INFO

_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
_RENAMED = {"asctime": "time", "levelname": "level", "name": "logger"}


def json_formatter() -> logging.Formatter:
    """The formatter of every log line: compact JSON, ISO 8601 UTC time, exc_info as text."""
    formatter = JsonFormatter(
        _FIELDS,
        rename_fields=_RENAMED,
        json_serializer=functools.partial(json.dumps, separators=(",", ":")),
        json_default=str,
    )
    formatter.converter = time.gmtime
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    return formatter


def configure(level: str, stream: TextIO | None = None) -> None:
    """JSON lines to `stream` (stdout) at `level`, unless logging is already set up (tests)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(json_formatter())
        root.addHandler(handler)
    root.setLevel(level)
    quiet_third_parties(level)


def quiet_third_parties(level: str | int) -> None:
    """Keep the libraries of THIRD_PARTY_LOGGERS at INFO or above, whatever `level` is."""
    number = logging.getLevelName(level) if isinstance(level, str) else level
    floor = max(int(number), THIRD_PARTY_FLOOR)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(floor)


def gunicorn_logconfig(level: str) -> dict[str, Any]:
    """A logging.config dict giving gunicorn's error and access logs the same JSON lines."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "worker.logs.json_formatter"}},
        "handlers": {"stdout": handler},
        "root": {"level": level.upper(), "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
        },
    }
