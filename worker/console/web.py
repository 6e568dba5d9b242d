"""Wires the console into the worker's Flask app when Supabase Auth is configured."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from worker.config import Settings
from worker.console import api, pages, session
from worker.console.auth_client import AuthClient
from worker.db import Database


def register_console(app: Flask, settings: Settings, database: Callable[[], Database]) -> None:
    """Add /login, /console pages and /api/ to `app` (needs settings.console_enabled)."""
    auth = AuthClient(
        str(settings.supabase_auth_url),
        str(settings.supabase_anon_key),
        timeout_seconds=settings.db_timeout_seconds,
    )
    session.install(app, session.ConsoleState(settings, auth, database))
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
