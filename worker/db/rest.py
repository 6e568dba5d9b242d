"""The supabase-py backend: every call is a PostgREST RPC (`POST /rest/v1/rpc/<fn>`).

supabase-py gets an httpx client we build, so the timeouts are explicit (its own
`postgrest_client_timeout` truncates to whole seconds and is deprecated) and so we can see the
HTTP status and Retry-After behind a postgrest APIError, which carries neither.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx
from postgrest.exceptions import APIError

from supabase import Client, ClientOptions, create_client
from worker.db.types import Shape, error_for_code
from worker.errors import DatabaseConstraintError, DatabaseError, parse_retry_after

SCHEMA = "public"
DEFAULT_TIMEOUT_SECONDS = 10.0
# HTTP statuses that mean "the gateway or database is busy or away", when the body has no code.
TRANSIENT_HTTP_STATUSES = frozenset({408, 429})


class _LastResponse(threading.local):
    """The status and Retry-After of the last response this thread received."""

    status: int | None = None
    retry_after: str | None = None


def error_from_api_error(
    fn: str, exc: APIError, status: int | None, retry_after_header: str | None
) -> DatabaseError | DatabaseConstraintError:
    """Classify a PostgREST error: by its SQLSTATE/PGRST code, else by the HTTP status."""
    message = exc.message or "PostgREST error"
    if exc.details:
        message = f"{message} ({exc.details})"
    if exc.hint:
        message = f"{message} [hint: {exc.hint}]"
    code = exc.code
    retry_after = parse_retry_after(retry_after_header)
    # Without a PostgREST body (a proxy's error page), postgrest-py puts the 3-digit HTTP
    # status in `code`; a SQLSTATE has 5 characters and a PGRST code starts with letters.
    status_in_code = code is not None and len(code) == 3 and code.isdigit()
    if code and not status_in_code:
        return error_for_code(fn, message, code, retry_after=retry_after)
    if status is None and status_in_code and code is not None:
        status = int(code)
    if status is not None and (status >= 500 or status in TRANSIENT_HTTP_STATUSES):
        return DatabaseError(f"{fn}: HTTP {status}: {message}", code=code, retry_after=retry_after)
    return DatabaseConstraintError(f"{fn}: HTTP {status}: {message}", code=code)


@contextmanager
def translate_errors(fn: str, last: _LastResponse) -> Iterator[None]:
    """The one place HTTP and PostgREST failures become worker errors."""
    last.status = None
    last.retry_after = None
    try:
        yield
    except APIError as exc:
        raise error_from_api_error(fn, exc, last.status, last.retry_after) from exc
    except httpx.TimeoutException as exc:
        raise DatabaseError(f"{fn}: PostgREST timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise DatabaseError(f"{fn}: PostgREST unreachable ({exc})") from exc


def shape_result(data: Any, shape: Shape) -> Any:
    """PostgREST's answer in the transport's shapes (it sends 204 and no body for void)."""
    if shape == "void":
        return None
    if shape == "rows":
        if data is None:
            return []
        return data if isinstance(data, list) else [data]
    if shape == "row":
        # Older PostgREST versions answer a composite as a one-element array.
        if isinstance(data, list):
            return data[0] if data else None
        return data or None
    # A scalar; supabase-py turns an empty body into [] (it cannot tell it from JSON []).
    return data


class RestTransport:
    """Transport over supabase-py's PostgREST client (thread-safe)."""

    def __init__(
        self,
        url: str,
        service_role_key: str,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_connections: int = 20,
    ) -> None:
        self._last = _LastResponse()
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout_seconds),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            event_hooks={"response": [self._remember]},
        )
        # postgrest-py retries only GET/HEAD, and never an RPC POST; turning it off keeps a
        # failed call's retries where they belong, in the queue's backoff.
        options = ClientOptions(
            schema=SCHEMA, httpx_client=self._http, postgrest_client_retry=False
        )
        self._client: Client = create_client(url, service_role_key, options=options)
        # Built lazily by supabase-py; build it now rather than race on it from worker threads.
        self._postgrest = self._client.postgrest
        self._rest_url = str(self._client.rest_url)
        self._headers = dict(self._client.options.headers)

    def _remember(self, response: httpx.Response) -> None:
        self._last.status = response.status_code
        self._last.retry_after = response.headers.get("Retry-After")

    def call(self, fn: str, args: Mapping[str, Any], shape: Shape) -> Any:
        """POST /rest/v1/rpc/<fn> with the named arguments as a JSON object."""
        with translate_errors(fn, self._last):
            response = self._postgrest.rpc(fn, dict(args)).execute()
        return shape_result(response.data, shape)

    def ping(self) -> None:
        """GET the REST root, which PostgREST answers only with a working database."""
        with translate_errors("ping", self._last):
            response = self._http.get(self._rest_url + "/", headers=self._headers)
            if response.status_code >= 400:
                try:
                    body = response.json()
                except ValueError:
                    body = {}
                if not isinstance(body, dict):
                    body = {}
                body.setdefault("message", response.reason_phrase)
                body["code"] = body.get("code") or str(response.status_code)
                raise APIError(body)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()
