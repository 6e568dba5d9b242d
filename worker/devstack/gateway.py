"""A small PostgREST-compatible RPC gateway over a local database, for tests and benchmarks.

It does for `POST /rest/v1/rpc/<fn>` what Supabase's Kong + PostgREST do, so the supabase-py
backend is tested against the real database: checks the `apikey` (a legacy JWT key, or a secret
API key `sb_secret_...` that the gateway turns into its role, as Supabase's does), verifies the
HS256 JWT from `Authorization: Bearer`, opens a transaction, `set local role` to the JWT's `role`
claim, sets `request.jwt.claims`, calls the function with named arguments (converted from JSON with
`json_to_record`, as PostgREST does) and answers with PostgREST's shapes, error bodies and HTTP
statuses. Set-returning results honour `limit`/`offset` and are cut at `max_rows` (PostgREST's
`db-max-rows`). It is never used by the product.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import jwt
import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

# The Supabase CLI's well-known local JWT secret: a throwaway test value, never a real secret.
TEST_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"  # noqa: S105
# A secret API key as Supabase's new keys look; a throwaway test value.
TEST_SECRET_KEY = "sb_secret_local-test-key-not-a-real-secret"  # noqa: S105
ANON_ROLE = "anon"
REST_PREFIX = "/rest/v1"
POOL_TIMEOUT_SECONDS = 5.0

_OVERLOADS_SQL = """
select p.oid::bigint,
       coalesce(p.proargnames, '{}') as names,
       array(select format_type(t, null) from unnest(p.proargtypes) as t) as in_types,
       coalesce(p.proargmodes::text[], '{}') as modes,
       p.pronargs, p.pronargdefaults, p.proretset,
       format_type(p.prorettype, null) as rettype,
       t.typtype, t.typrelid <> 0 as ret_is_relation
from pg_catalog.pg_proc p
join pg_catalog.pg_type t on t.oid = p.prorettype
where p.pronamespace = %(schema)s::regnamespace and p.proname = %(fn)s and p.prokind = 'f'
"""


@dataclass(frozen=True)
class Routine:
    """What PostgREST's schema cache knows about one function overload."""

    schema: str
    name: str
    args: tuple[tuple[str, str], ...]  # (name, type) of the input arguments, in order
    required: frozenset[str]  # input arguments without a default
    returns_set: bool
    returns_void: bool
    returns_composite: bool  # a table/composite type or OUT/TABLE columns (record)

    def accepts(self, keys: set[str]) -> bool:
        """PostgREST picks the overload whose argument names match the body's keys."""
        names = {name for name, _ in self.args}
        return keys <= names and self.required <= keys


def _routine(schema: str, fn: str, row: tuple[Any, ...]) -> Routine:
    _oid, names, in_types, modes, nargs, ndefaults, retset, rettype, typtype, is_rel = row
    if modes:
        # With OUT/TABLE columns, proargnames covers every argument; keep the input ones.
        in_names = [n for n, m in zip(names, modes, strict=False) if m in ("i", "b", "v")]
    else:
        in_names = list(names[:nargs])
    args = tuple(zip(in_names, in_types, strict=True))
    required = frozenset(name for name, _ in args[: nargs - ndefaults])
    return Routine(
        schema=schema,
        name=fn,
        args=args,
        required=required,
        returns_set=retset,
        returns_void=rettype == "void",
        returns_composite=bool(is_rel) or (typtype == "p" and rettype == "record"),
    )


class ApiError(Exception):
    """An answer in PostgREST's error format."""

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        details: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"code": code, "details": details, "hint": hint, "message": message}


def http_status_for_sqlstate(code: str, authenticated: bool) -> int:
    """PostgREST's SQLSTATE -> HTTP status table (docs: "Errors" / "SQLSTATE to HTTP")."""
    if code.startswith("PT") and code[2:].isdigit():
        return int(code[2:])
    exact = {
        "23503": 409,
        "23505": 409,
        "25006": 405,
        "P0001": 400,
        "42883": 404,
        "42P01": 404,
        "42P17": 500,
    }
    if code in exact:
        return exact[code]
    if code == "42501":
        return 403 if authenticated else 401
    by_class = {
        "08": 503,
        "09": 500,
        "0L": 403,
        "0P": 403,
        "25": 500,
        "28": 403,
        "2D": 500,
        "38": 500,
        "39": 500,
        "3B": 500,
        "40": 500,
        "53": 503,
        "54": 500,
        "55": 500,
        "57": 500,
        "58": 500,
        "F0": 500,
        "HV": 500,
        "P0": 500,
        "XX": 500,
    }
    return by_class.get(code[:2], 400)


class RpcGateway:
    """A threaded HTTP server on loopback answering PostgREST RPC calls against `conninfo`."""

    def __init__(
        self,
        conninfo: str,
        *,
        jwt_secret: str = TEST_JWT_SECRET,
        schemas: tuple[str, ...] = ("public",),
        anon_role: str = ANON_ROLE,
        pool_timeout: float = POOL_TIMEOUT_SECONDS,
        secret_keys: dict[str, str] | None = None,
        max_rows: int | None = None,
    ) -> None:
        self.jwt_secret = jwt_secret
        # sb_ API key -> the role Supabase's gateway gives its requests.
        self.secret_keys = dict(secret_keys or {TEST_SECRET_KEY: "service_role"})
        self.max_rows = max_rows
        self.schemas = schemas
        self.anon_role = anon_role
        self._routines: dict[tuple[str, str], list[Routine]] = {}
        self._routines_lock = threading.Lock()
        self._pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=8,
            timeout=pool_timeout,
            name="rpc-gateway",
            open=True,
        )
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="rpc-gateway", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """The SUPABASE_URL to give supabase-py (the gateway serves /rest/v1 under it)."""
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)  # an AF_INET address, never a Unix socket path
        return f"http://{host}:{port}"

    def close(self) -> None:
        """Stop serving and close the database pool."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._pool.close()

    def make_jwt(self, role: str, sub: str | None = None, **claims: Any) -> str:
        """An HS256 JWT as Supabase issues them, valid for an hour."""
        now = int(time.time())
        payload: dict[str, Any] = {"iss": "supabase-test", "role": role, "iat": now}
        payload["exp"] = now + 3600
        if sub is not None:
            payload["sub"] = sub
        payload.update(claims)
        return jwt.encode(payload, self.jwt_secret, algorithm="HS256")

    # -- request handling -------------------------------------------------------------------

    def claims_for(self, headers: Any) -> dict[str, Any]:
        """Kong's apikey check, then PostgREST's JWT verification; no token means anon."""
        apikey = headers.get("apikey")
        if not apikey:
            raise ApiError(401, None, "No API key found in request")
        authorization = headers.get("Authorization")
        if apikey.startswith("sb_"):
            # Supabase's new API keys are opaque: the gateway looks the key up and, when the
            # request carries no user JWT, sends PostgREST a JWT of the key's role. A non-JWT
            # in Authorization reaches PostgREST as it is, which rejects it (PGRST301).
            role = self.secret_keys.get(apikey)
            if role is None:
                raise ApiError(401, None, "Invalid API key")
            if not authorization:
                return {"role": role}
        else:
            self._decode(apikey, kong=True)
        if not authorization:
            return {"role": self.anon_role}
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "PGRST301", "Invalid Authorization header")
        claims = self._decode(token.strip(), kong=False)
        claims.setdefault("role", self.anon_role)
        return claims

    def _decode(self, token: str, *, kong: bool) -> dict[str, Any]:
        try:
            return dict(
                jwt.decode(
                    token, self.jwt_secret, algorithms=["HS256"], options={"verify_aud": False}
                )
            )
        except jwt.ExpiredSignatureError as exc:
            if kong:
                raise ApiError(401, None, "Invalid API key") from exc
            raise ApiError(401, "PGRST303", "JWT expired") from exc
        except jwt.InvalidTokenError as exc:
            if kong:
                raise ApiError(401, None, "Invalid API key") from exc
            raise ApiError(401, "PGRST301", f"JWSError: {exc}") from exc

    def schema_for(self, header: str | None) -> str:
        """The Content-Profile / Accept-Profile schema, which must be an exposed one."""
        schema = header or self.schemas[0]
        if schema not in self.schemas:
            raise ApiError(
                406,
                "PGRST106",
                "Invalid schema: " + schema,
                hint="Only the following schemas are exposed: " + ", ".join(self.schemas),
            )
        return schema

    def routine(self, schema: str, fn: str, keys: set[str]) -> Routine:
        """The overload the body's keys select, or PGRST202 as PostgREST answers."""
        for refresh in (False, True):
            for candidate in self._overloads(schema, fn, refresh=refresh):
                if candidate.accepts(keys):
                    return candidate
        listed = ", ".join(sorted(keys))
        raise ApiError(
            404,
            "PGRST202",
            f"Could not find the function {schema}.{fn}({listed}) in the schema cache",
            hint="Perhaps you meant to call a function with other arguments",
        )

    def _overloads(self, schema: str, fn: str, *, refresh: bool) -> list[Routine]:
        key = (schema, fn)
        with self._routines_lock:
            cached = self._routines.get(key)
        if cached is not None and not refresh:
            return cached
        with self._pool.connection() as conn:
            rows = conn.execute(_OVERLOADS_SQL, {"schema": schema, "fn": fn}).fetchall()
        routines = [_routine(schema, fn, row) for row in rows]
        with self._routines_lock:
            self._routines[key] = routines
        return routines

    def call(
        self, routine: Routine, body: dict[str, Any], claims: dict[str, Any], rollback: bool
    ) -> tuple[int, Any]:
        """Run the call in one transaction as the JWT's role; (HTTP status, JSON or None)."""
        role = str(claims["role"])
        query = _call_sql(routine, body)
        with self._pool.connection() as conn, conn.transaction(force_rollback=rollback):
            conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
            conn.execute(
                "select set_config('request.jwt.claims', %s, true),"
                " set_config('request.method', 'POST', true),"
                " set_config('request.path', %s, true)",
                (json.dumps(claims), f"/rpc/{routine.name}"),
            )
            row = conn.execute(query, {"args": json.dumps(body)}).fetchone()
        if routine.returns_void:
            return 204, None
        return 200, None if row is None else row[0]


def _call_sql(routine: Routine, body: dict[str, Any]) -> sql.Composed:
    # Only the arguments sent are passed, so the function's defaults apply to the others.
    sent = [(name, sql_type) for name, sql_type in routine.args if name in body]
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(sql_type)) for name, sql_type in sent
    )
    named = sql.SQL(", ").join(
        sql.SQL("{} => _args.{}").format(sql.Identifier(name), sql.Identifier(name))
        for name, _ in sent
    )
    target = sql.SQL("{}.{}({})").format(
        sql.Identifier(routine.schema), sql.Identifier(routine.name), named
    )
    source: sql.Composable
    if sent:
        source = sql.SQL("json_to_record(%(args)s::json) as _args({})").format(columns)
    else:
        source = sql.SQL("(select) as _args")
    if routine.returns_void:
        return sql.SQL("select {} from {}").format(target, source)
    if routine.returns_set and routine.returns_composite:
        return sql.SQL("select coalesce(json_agg(_r), '[]') from {}, lateral {} as _r").format(
            source, target
        )
    if routine.returns_set:
        return sql.SQL(
            "select coalesce(json_agg(_r._v), '[]') from {}, lateral {} as _r(_v)"
        ).format(source, target)
    if routine.returns_composite:
        return sql.SQL("select to_json(_r) from {}, lateral {} as _r").format(source, target)
    return sql.SQL("select to_json({}) from {}").format(target, source)


def _json_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "PGRST102", "Empty or invalid json") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "PGRST102", "Expected a JSON object of named arguments")
    return body


def _select_single(accept: str, payload: Any) -> Any:
    if "application/vnd.pgrst.object+json" not in accept:
        return payload
    rows = payload if isinstance(payload, list) else [payload]
    if len(rows) != 1:
        raise ApiError(
            406,
            "PGRST116",
            "JSON object requested, multiple (or no) rows returned",
            details=f"The result contains {len(rows)} rows",
        )
    return rows[0]


def _handler_for(gateway: RpcGateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects from PostgREST
        # Headers and body go out in two writes; with Nagle on, the client's delayed ACK would
        # add ~40 ms to every call.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            # The OpenAPI root; it touches the database so it doubles as a readiness probe.
            try:
                if urlsplit(self.path).path.rstrip("/") != REST_PREFIX:
                    raise ApiError(404, "PGRST125", "Invalid path specified in request URL")
                gateway.claims_for(self.headers)
                with gateway._pool.connection() as conn:
                    conn.execute("select 1")
                self._send(200, {"swagger": "2.0", "info": {"title": "rpc-gateway"}})
            except ApiError as exc:
                self._send(exc.status, exc.body)
            except (PoolTimeout, psycopg.OperationalError) as exc:
                self._send(503, _connection_error(exc))

        def do_POST(self) -> None:
            # Read the body before anything can fail, or its bytes would be taken for the next
            # request on this keep-alive connection.
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            self._claims: dict[str, Any] = {"role": gateway.anon_role}
            headers: dict[str, str] = {}
            try:
                status, payload, headers = self._rpc(raw)
            except ApiError as exc:
                status, payload = exc.status, exc.body
            except (PoolTimeout, psycopg.OperationalError) as exc:
                if isinstance(exc, psycopg.Error) and exc.sqlstate:
                    status, payload = self._sql_error(exc)
                else:
                    status, payload = 503, _connection_error(exc)
            except psycopg.Error as exc:
                status, payload = self._sql_error(exc)
            self._send(status, payload, headers)

        def _rpc(self, raw: bytes) -> tuple[int, Any, dict[str, str]]:
            path = urlsplit(self.path).path
            prefix = f"{REST_PREFIX}/rpc/"
            if not path.startswith(prefix) or len(path) == len(prefix):
                raise ApiError(404, "PGRST125", "Invalid path specified in request URL")
            fn = path[len(prefix) :]
            self._claims = gateway.claims_for(self.headers)
            schema = gateway.schema_for(self.headers.get("Content-Profile"))
            body = _json_body(raw)
            routine = gateway.routine(schema, fn, set(body))
            prefer = {p.strip() for p in self.headers.get("Prefer", "").split(",") if p.strip()}
            rollback = "tx=rollback" in prefer
            status, payload = gateway.call(routine, body, self._claims, rollback)
            headers: dict[str, str] = {}
            if rollback:
                headers["Preference-Applied"] = "tx=rollback"
            if status == 204:
                return status, None, headers
            if routine.returns_set and isinstance(payload, list):
                payload = self._page(payload)
            payload = _select_single(self.headers.get("Accept", "application/json"), payload)
            if isinstance(payload, list) and any(p.startswith("count=") for p in prefer):
                total = len(payload)
                headers["Content-Range"] = f"0-{total - 1}/{total}" if total else "*/0"
            return status, payload, headers

        def _page(self, rows: list[Any]) -> list[Any]:
            # PostgREST applies ?offset=&limit= to a function's rows, then its max-rows cap.
            query = parse_qs(urlsplit(self.path).query)
            try:
                offset = int(query.get("offset", ["0"])[0])
                limit = int(query["limit"][0]) if "limit" in query else None
            except ValueError as exc:
                raise ApiError(400, "PGRST103", "Requested range not satisfiable") from exc
            caps = [n for n in (limit, gateway.max_rows) if n is not None]
            end = offset + min(caps) if caps else None
            return rows[offset:end]

        def _sql_error(self, exc: psycopg.Error) -> tuple[int, dict[str, Any]]:
            code = exc.sqlstate or "XX000"
            authenticated = self._claims.get("role") != gateway.anon_role
            diag = exc.diag
            body = {
                "code": code,
                "details": diag.message_detail,
                "hint": diag.message_hint,
                "message": diag.message_primary or str(exc).strip(),
            }
            return http_status_for_sqlstate(code, authenticated), body

        def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            body = b"" if status == 204 else json.dumps(payload).encode()
            self.send_response(status, HTTPStatus(status).phrase)
            if status != 204:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _connection_error(exc: Exception) -> dict[str, Any]:
    return {
        "code": "PGRST000",
        "details": str(exc).strip(),
        "hint": None,
        "message": "Could not connect with the database due to an incorrect db-uri or due to "
        "the PostgreSQL service not running.",
    }


# The local clusters' well-known password (scripts/local-db), never a real one.
def authenticator_url(database_url: str, password: str = "postgres") -> str:  # noqa: S107
    """The same database as the `authenticator` role, as PostgREST connects on Supabase."""
    split = urlsplit(database_url)
    host = split.hostname or "127.0.0.1"
    port = f":{split.port}" if split.port else ""
    return urlunsplit(split._replace(netloc=f"authenticator:{password}@{host}{port}"))
