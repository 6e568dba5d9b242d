"""The console's request glue: who is signed in, cookies, refresh, CSRF and error answers.

A person is known by `Authorization: Bearer <access token>` (scripts) or by the HttpOnly
cookies the sign-in form sets (browsers). Cookie requests that change state must carry
`X-CSRF-Token` with the token of the page's `<meta name="csrf-token">`; a bearer token cannot
be sent by another site, so it needs none. An access token close to expiry is refreshed through
Auth and the new cookies ride on the response.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.wrappers import Response as BaseResponse

from worker.config import Settings
from worker.console.auth_client import AuthClient, SignInRefused, Tokens
from worker.console.identity import (
    REFRESH_MARGIN_SECONDS,
    NotSignedIn,
    Person,
    csrf_matches,
    csrf_token,
    is_loopback_host,
    verify_access_token,
)
from worker.db import Database
from worker.errors import DatabaseConstraintError, DatabaseError, WorkerError

log = logging.getLogger(__name__)

EXTENSION_KEY = "support_console"
ACCESS_COOKIE = "sb-access-token"
REFRESH_COOKIE = "sb-refresh-token"
CSRF_HEADER = "X-CSRF-Token"
COOKIE_MAX_AGE_SECONDS = 7 * 24 * 3600  # the refresh token's life; Auth decides it is valid
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# SQLSTATEs (PostgREST's PTnnn convention for our own) -> the API's HTTP answers.
STATUS_BY_CODE = {
    "42501": 403,
    "PT400": 400,
    "PT403": 403,
    "PT404": 404,
    "PT409": 409,
    "22P02": 400,  # malformed input (e.g. a timestamp cursor)
    "23514": 400,  # a check constraint: the input broke a rule
}
ERROR_NAMES = {
    400: "bad_request",
    401: "signed_out",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    503: "unavailable",
}


class ConsoleError(Exception):
    """An answer other than success, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ConsoleState:
    """Per-app console state kept in `app.extensions`."""

    settings: Settings
    auth: AuthClient
    database: Callable[[], Database]  # the app's Database (its base transport)


def state() -> ConsoleState:
    """The console state of the current app."""
    console: ConsoleState = current_app.extensions[EXTENSION_KEY]
    return console


def error_from_database(exc: WorkerError) -> ConsoleError:
    """A database refusal as the API's answer (403, 404, 409 ...); outages as 503."""
    if isinstance(exc, DatabaseConstraintError):
        status = STATUS_BY_CODE.get(exc.code or "")
        if status is not None:
            return ConsoleError(status, _sql_message(exc.message))
    if isinstance(exc, DatabaseError):
        return ConsoleError(503, "the database is unavailable; try again shortly")
    log.error("console: unexpected database error: %s", exc)
    return ConsoleError(500, "unexpected error; see the worker logs")


def _sql_message(message: str) -> str:
    # "console_send_reply: reply ... is already sent" -> the part a person can read.
    return message.split(": ", 1)[1] if ": " in message else message


def json_error(status: int, message: str) -> tuple[Response, int]:
    """The API's error body."""
    body = jsonify({"error": ERROR_NAMES.get(status, "error"), "message": message})
    return body, status


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def current_person() -> Person | None:
    """The signed-in person of this request (cached on `g`), refreshing the session if due."""
    if "person" in g:
        person: Person | None = g.person
        return person
    resolved = _resolve_person()
    g.person = resolved
    return resolved


def _resolve_person() -> Person | None:
    console = state()
    secret = str(console.settings.supabase_jwt_secret)
    token = _bearer(request.headers.get("Authorization"))
    if token is not None:
        g.via = "bearer"
        try:
            return verify_access_token(token, secret)
        except NotSignedIn:
            return None
    access = request.cookies.get(ACCESS_COOKIE)
    refresh = request.cookies.get(REFRESH_COOKIE)
    if not access and not refresh:
        return None
    g.via = "cookie"
    person: Person | None = None
    if access:
        try:
            person = verify_access_token(access, secret)
        except NotSignedIn:
            person = None
    if person is not None and not person.expires_within(REFRESH_MARGIN_SECONDS):
        return person
    if not refresh:
        return person
    try:
        tokens = console.auth.refresh(refresh)
        fresh = verify_access_token(tokens.access_token, secret)
    except (SignInRefused, NotSignedIn):
        g.clear_session = True
        return None
    g.new_tokens = tokens
    return fresh


def require_person() -> Person:
    """The signed-in person, or a 401 ConsoleError; checks CSRF for cookie requests."""
    person = current_person()
    if person is None:
        raise ConsoleError(401, "sign in first (POST /login, or send a Bearer access token)")
    if request.method not in SAFE_METHODS and g.get("via") == "cookie":
        secret = str(state().settings.supabase_jwt_secret)
        if not csrf_matches(secret, person.session_id, request.headers.get(CSRF_HEADER)):
            raise ConsoleError(403, f"missing or wrong {CSRF_HEADER} header")
    return person


def person_db(person: Person) -> Database:
    """The Database as this person: their role and claims, never the service role."""
    return state().database().as_person(person.access_token, person.claims)


def page_csrf_token() -> str:
    """The CSRF token for the page's <meta name="csrf-token"> ('' when signed out)."""
    person = current_person()
    if person is None:
        return ""
    return csrf_token(str(state().settings.supabase_jwt_secret), person.session_id)


def set_session_cookies(response: BaseResponse, tokens: Tokens) -> None:
    """The HttpOnly, SameSite cookies of a session (Secure except on loopback)."""
    secure = not is_loopback_host(request.host)
    pairs = ((ACCESS_COOKIE, tokens.access_token), (REFRESH_COOKIE, tokens.refresh_token))
    for name, value in pairs:
        response.set_cookie(
            name,
            value,
            max_age=COOKIE_MAX_AGE_SECONDS,
            path="/",
            secure=secure,
            httponly=True,
            samesite="Lax",
        )


def clear_session_cookies(response: BaseResponse) -> None:
    """Forget the session in this browser."""
    secure = not is_loopback_host(request.host)
    for name in (ACCESS_COOKIE, REFRESH_COOKIE):
        response.delete_cookie(name, path="/", secure=secure, httponly=True, samesite="Lax")


def _after_request(response: Response) -> Response:
    tokens = g.get("new_tokens")
    if tokens is not None:
        set_session_cookies(response, tokens)
    elif g.get("clear_session"):
        clear_session_cookies(response)
    if request.path.startswith(("/api/", "/console", "/login")):
        # Pages and answers hold a person's data: never cached by a shared cache.
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def install(app: Flask, console: ConsoleState) -> None:
    """Keep the console state on the app and ride refreshed cookies on every response."""
    app.extensions[EXTENSION_KEY] = console
    app.after_request(_after_request)


def form_or_json() -> dict[str, Any]:
    """The request's fields, from a JSON body or a form."""
    if request.is_json:
        data = request.get_json(silent=True)
        return data if isinstance(data, dict) else {}
    return {key: value for key, value in request.form.items()}
