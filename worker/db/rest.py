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
from postgrest import SyncPostgrestClient
from postgrest.exceptions import APIError

from supabase import Client, ClientOptions, create_client
from worker.db.types import Shape, error_for_code
from worker.errors import DatabaseConstraintError, DatabaseError, parse_retry_after

SCHEMA = "public"
DEFAULT_TIMEOUT_SECONDS = 10.0
# PostgREST answers at most `max-rows` rows (1,000 on Supabase by default, supabase/config.toml
# [api] max_rows) and cuts the rest silently. Listings are fetched page by page with limit/offset
# until a page comes back empty, so a server cap smaller than the page is also handled.
PAGE_ROWS = 1000
# The set-returning functions fetched in pages. Each is STABLE with a total ORDER BY, so running it
# again for the next page continues the same list (a store added meanwhile sorts last). Never a
# volatile function: a second page of dequeue_jobs would claim a second batch.
PAGED_FUNCTIONS = frozenset(
    {"list_active_stores", "list_stores", "list_dead_letter_jobs", "get_job_events"}
)
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


def is_jwt(key: str) -> bool:
    """Whether an API key is a JWT (the legacy service_role key) rather than an sb_ key."""
    parts = key.split(".")
    return len(parts) == 3 and all(parts)


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
        key: str,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_connections: int = 20,
        page_rows: int = PAGE_ROWS,
        anon_key: str | None = None,
    ) -> None:
        self._page_rows = page_rows
        self._anon_key = anon_key
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
        self._client: Client = create_client(url, key, options=options)
        if not is_jwt(key):
            # A secret API key (sb_secret_...) is not a JWT: Supabase's gateway takes it from the
            # `apikey` header and hands PostgREST a service_role JWT of its own. supabase-py also
            # sends the key as `Authorization: Bearer`, which PostgREST rejects as a malformed
            # JWT (PGRST301) wherever the gateway passes it through; the apikey alone is enough.
            self._client.options.headers.pop("Authorization", None)
        # Built lazily by supabase-py; build it now rather than race on it from worker threads.
        self._postgrest = self._client.postgrest
        self._rest_url = str(self._client.rest_url)
        self._headers = dict(self._client.options.headers)

    def _remember(self, response: httpx.Response) -> None:
        self._last.status = response.status_code
        self._last.retry_after = response.headers.get("Retry-After")

    def call(self, fn: str, args: Mapping[str, Any], shape: Shape) -> Any:
        """POST /rest/v1/rpc/<fn> with the named arguments as a JSON object."""
        if shape == "rows" and fn in PAGED_FUNCTIONS:
            return self._all_pages(fn, args)
        with translate_errors(fn, self._last):
            response = self._postgrest.rpc(fn, dict(args)).execute()
        return shape_result(response.data, shape)

    def _all_pages(self, fn: str, args: Mapping[str, Any]) -> list[Any]:
        rows: list[Any] = []
        while True:
            with translate_errors(fn, self._last):
                request = self._postgrest.rpc(fn, dict(args))
                response = request.limit(self._page_rows).offset(len(rows)).execute()
            page = shape_result(response.data, "rows")
            if not page:
                return rows
            rows.extend(page)

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

    def for_person(self, access_token: str, claims: Mapping[str, Any]) -> PersonRestTransport:
        """A transport whose calls carry the person's access token: PostgREST then runs them as
        the token's role with its claims, and RLS decides. The API key is the anon key when one
        is configured (what a browser would send); the HTTP connections are shared."""
        headers = dict(self._headers)
        if self._anon_key:
            headers["apikey"] = self._anon_key
        headers["Authorization"] = f"Bearer {access_token}"
        client = SyncPostgrestClient(
            self._rest_url, schema=SCHEMA, headers=headers, http_client=self._http,
            retry_enabled=False,
        )
        return PersonRestTransport(client, self._last, self)


class PersonRestTransport:
    """The PostgREST transport for one signed-in person."""

    def __init__(self, client: SyncPostgrestClient, last: _LastResponse, base: RestTransport):
        self._client = client
        self._last = last
        self._base = base

    def call(self, fn: str, args: Mapping[str, Any], shape: Shape) -> Any:
        """POST /rest/v1/rpc/<fn> with the person's token."""
        with translate_errors(fn, self._last):
            response = self._client.rpc(fn, dict(args)).execute()
        return shape_result(response.data, shape)

    def ping(self) -> None:
        """The base transport's readiness."""
        self._base.ping()

    def close(self) -> None:
        """Nothing to release: the HTTP client belongs to the base transport."""
