"""The psycopg 3 backend: SQL function calls over a connection pool, one transaction per call.

Each argument is cast to the type the function declares (read once from pg_proc), so Python
lists reach uuid[] parameters and ints reach bigint ones without per-call type hints, and the
query text per function stays stable enough for psycopg to prepare it.

Behind a transaction pooler (Supabase's Supavisor on port 6543, pgbouncer in transaction mode)
consecutive transactions of one client connection run on different server connections, so
nothing may outlive a transaction: no prepared statements and no session settings. There the
timeout and time zone are set per transaction instead of as startup options.
"""

from __future__ import annotations

import json
import math
import select
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from time import monotonic
from typing import Any

import psycopg
from psycopg import sql
from psycopg.adapt import Buffer, Loader
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.datetime import TimestampLoader
from psycopg.types.json import Json, Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from worker.config import PreparedStatements
from worker.db.types import Shape, error_for_code
from worker.errors import DatabaseConstraintError, DatabaseError

SCHEMA = "public"
DEFAULT_TIMEOUT_SECONDS = 10.0
# psycopg prepares a statement after this many executions of the same text on a connection.
# None switches preparing off, which transaction-mode poolers without prepared-statement
# support need.
DEFAULT_PREPARE_THRESHOLD: int | None = 5
# libpq rejects connect_timeout values below 2 seconds (it silently raises them to 2).
MIN_CONNECT_TIMEOUT_SECONDS = 2
# Supabase's transaction pooler port (Supavisor); 5432 on the pooler host is its session mode.
TRANSACTION_POOLER_PORT = 6543
# A pooled connection idle for longer than this is checked with a round trip before use; one
# returned more recently is only checked for input the server sent meanwhile (no round trip).
CHECK_AFTER_IDLE_SECONDS = 1.0

# Behind a transaction pooler: the call's settings, local to its transaction (SET LOCAL).
_TRANSACTION_SETTINGS_SQL = (
    b"select set_config('statement_timeout', %(timeout)s, true),"
    b" set_config('TimeZone', 'UTC', true)"
)

# Input arguments of every overload of a function, with their declared types, in order.
_SIGNATURE_SQL = """
select p.oid::bigint as oid, a.name, format_type(a.type, null) as type
from pg_catalog.pg_proc p
cross join lateral unnest(
    coalesce(p.proallargtypes, p.proargtypes::oid[]),
    p.proargnames,
    coalesce(p.proargmodes, array_fill('i'::"char", array[p.pronargs]))
) with ordinality as a(type, name, mode, position)
where p.pronamespace = %(schema)s::regnamespace and p.proname = %(fn)s
  and a.mode in ('i', 'b', 'v')
order by p.oid, a.position
"""

Signature = dict[str, str]

# The roles a person's call may take (PostgREST's `role` claim); never service_role.
PERSON_ROLES = frozenset({"authenticated"})
# What PostgREST runs before a request's query (role and claims local to the transaction).
_AS_PERSON_SQL = (
    "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)"
)


class UuidTextLoader(Loader):
    """uuid as its canonical text, the common id type (psycopg builds uuid.UUID objects)."""

    def load(self, data: Buffer) -> str:
        return bytes(data).decode()


class NumericLoader(Loader):
    """numeric as int when integral, else float: the common number types (not Decimal)."""

    def load(self, data: Buffer) -> int | float:
        text = bytes(data).decode()
        try:
            return int(text)
        except ValueError:
            value = Decimal(text)
        if value.is_finite() and value == value.to_integral_value():
            return int(value)
        return float(value)


class UtcTimestampLoader(TimestampLoader):
    """timestamp without time zone as aware UTC, the schema's convention for such columns."""

    def load(self, data: Buffer) -> datetime:
        return super().load(data).replace(tzinfo=UTC)


def uses_transaction_pooler(conninfo: str, mode: PreparedStatements = "auto") -> bool:
    """Whether calls must leave no state on the connection: 'off', or 'auto' on port 6543."""
    if mode != "auto":
        return mode == "off"
    try:
        ports = conninfo_to_dict(conninfo).get("port")
    except psycopg.ProgrammingError:
        return False
    # libpq takes one port per host, comma-separated; any of them may be the pooler.
    return str(TRANSACTION_POOLER_PORT) in str(ports or "").split(",")


class PooledConnection(psycopg.Connection[Any]):
    """A pooled connection that knows since when it has been idle in the pool."""

    idle_since: float = 0.0  # time.monotonic(); 0 until the pool first holds it


def configure_connection(conn: PooledConnection) -> None:
    """Per-connection set-up run by the pool: load values as the common types (worker.db)."""
    conn.adapters.register_loader("uuid", UuidTextLoader)
    conn.adapters.register_loader("numeric", NumericLoader)
    conn.adapters.register_loader("timestamp", UtcTimestampLoader)
    conn.idle_since = monotonic()


def mark_idle(conn: PooledConnection) -> None:
    """The pool's reset callback: the connection goes back to the pool now."""
    conn.idle_since = monotonic()


def check_pooled_connection(conn: PooledConnection) -> None:
    """The pool's check before handing a connection out; raises if the connection is dead.

    A round trip (`ConnectionPool.check_connection`) on every call doubled the cost of a short
    call. A connection back from a call less than CHECK_AFTER_IDLE_SECONDS ago is checked
    without one: an idle connection receives nothing unless the server ended it (a restart or
    pg_terminate_backend sends a FATAL message and closes the socket), so input waiting on its
    socket means it needs the real check. A connection that still dies on use (the network
    dropped in that second) fails its call, which callers treat as a transient error.
    """
    if conn.closed or monotonic() - conn.idle_since >= CHECK_AFTER_IDLE_SECONDS:
        ConnectionPool.check_connection(conn)
        return
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    if readable:
        ConnectionPool.check_connection(conn)


@contextmanager
def translate_errors(fn: str) -> Iterator[None]:
    """The one place psycopg failures become worker errors (SQLSTATE kept in `.code`)."""
    try:
        yield
    except PoolTimeout as exc:
        raise DatabaseError(f"{fn}: no database connection available ({exc})") from exc
    except psycopg.Error as exc:
        raise error_from_psycopg(fn, exc) from exc


def error_from_psycopg(fn: str, exc: psycopg.Error) -> DatabaseError | DatabaseConstraintError:
    """Classify a psycopg error: by SQLSTATE when the server sent one, else by its class."""
    diag = exc.diag
    message = diag.message_primary or str(exc).strip() or type(exc).__name__
    if diag.message_detail:
        message = f"{message} ({diag.message_detail})"
    if exc.sqlstate:
        return error_for_code(fn, message, exc.sqlstate, constraint=diag.constraint_name)
    # No SQLSTATE: the failure happened client-side, e.g. connection refused or dropped.
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return DatabaseError(f"{fn}: {message}")
    return DatabaseConstraintError(f"{fn}: {message}")


def adapt(value: Any, sql_type: str) -> Any:
    """Wrap a Python value for a json/jsonb parameter; other types adapt by the cast."""
    if value is None:
        return None
    if sql_type == "jsonb":
        return Jsonb(value)
    if sql_type == "json":
        return Json(value)
    return value


def build_call(
    fn: str, signature: Signature, args: Mapping[str, Any], shape: Shape
) -> sql.Composed:
    """`select ... from public.fn(p_a => %(p_a)s::type, ...)` for the given arguments."""
    named = sql.SQL(", ").join(
        sql.SQL("{} => {}::{}").format(
            sql.Identifier(name), sql.Placeholder(name), sql.SQL(signature[name])
        )
        for name in args
    )
    target = sql.SQL("{}.{}({})").format(sql.Identifier(SCHEMA), sql.Identifier(fn), named)
    if shape in ("rows", "row"):
        return sql.SQL("select * from {}").format(target)
    return sql.SQL("select {}").format(target)


class PgTransport:
    """Transport over a psycopg_pool.ConnectionPool (thread-safe).

    Rows come back in the common types already (the loaders above, sessions in UTC), so
    Database skips its per-row conversion: on a claimed batch that conversion cost as much
    client CPU as the rest of the call.
    """

    returns_common_types = True

    def __init__(
        self,
        conninfo: str,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        min_size: int = 1,
        max_size: int = 10,
        prepared_statements: PreparedStatements = "auto",
        application_name: str = "support-worker",
    ) -> None:
        statement_ms = max(1, int(timeout_seconds * 1000))
        self.transaction_pooler = uses_transaction_pooler(conninfo, prepared_statements)
        self._statement_timeout = f"{statement_ms}ms"
        kwargs: dict[str, Any] = {
            "connect_timeout": max(MIN_CONNECT_TIMEOUT_SECONDS, math.ceil(timeout_seconds)),
            "application_name": application_name,
            # psycopg prepares a statement after DEFAULT_PREPARE_THRESHOLD executions; a
            # transaction pooler then runs EXECUTE on a server connection that never saw the
            # PREPARE ("prepared statement _pg3_0 does not exist"), or a different one.
            "prepare_threshold": None if self.transaction_pooler else DEFAULT_PREPARE_THRESHOLD,
            # Every call is one statement, which Postgres runs as its own transaction anyway;
            # without autocommit psycopg sends BEGIN and COMMIT as two more round trips each.
            "autocommit": True,
        }
        if not self.transaction_pooler:
            # Startup options cost no round trip; the statement timeout bounds every call so a
            # stuck query cannot hold a worker thread past its run budget.
            # TimeZone=UTC (Supabase's default): psycopg then returns timestamps in
            # datetime.UTC, the common type, with no conversion per value. pgbouncer refuses
            # the `options` startup parameter, and would not keep it per client anyway.
            kwargs["options"] = f"-c statement_timeout={statement_ms} -c TimeZone=UTC"
        self._signatures: dict[str, list[Signature]] = {}
        self._signatures_lock = threading.Lock()
        # Rendered query text per (function, argument names, shape): composing it with
        # psycopg.sql on every call cost more CPU than the rest of the call's client side.
        self._queries: dict[tuple[str, tuple[str, ...], Shape], bytes] = {}
        self._pool = ConnectionPool(
            conninfo,
            connection_class=PooledConnection,
            min_size=min_size,
            max_size=max_size,
            kwargs=kwargs,
            timeout=timeout_seconds,
            name="worker-db",
            configure=configure_connection,
            # After a database restart every pooled connection is dead; checking one before
            # handing it out replaces it instead of failing the caller (a round trip only for
            # a connection idle longer than CHECK_AFTER_IDLE_SECONDS).
            check=check_pooled_connection,
            reset=mark_idle,
            open=True,
        )

    def call(self, fn: str, args: Mapping[str, Any], shape: Shape) -> Any:
        """Run public.<fn>(named args) in its own transaction and shape the result."""
        with translate_errors(fn):
            # Resolved before taking a connection: a cache miss reads pg_proc on its own one.
            signature = self._signature(fn, args)
            with self._pool.connection() as conn, self._transaction(conn):
                return self._execute(conn, fn, signature, args, shape)

    def call_as(
        self, claims: Mapping[str, Any], fn: str, args: Mapping[str, Any], shape: Shape
    ) -> Any:
        """Run public.<fn> as the person of `claims`, exactly as PostgREST runs a request: one
        transaction, `role` set locally to the claims' role, `request.jwt.claims` set locally."""
        role = str(claims.get("role") or "")
        if role not in PERSON_ROLES:
            raise DatabaseConstraintError(f"{fn}: refusing to run as role {role!r}", code="42501")
        with translate_errors(fn):
            signature = self._signature(fn, args)
            with self._pool.connection() as conn, conn.transaction():
                self._set_call_settings(conn)
                conn.execute(_AS_PERSON_SQL, (role, json.dumps(dict(claims))))
                return self._execute(conn, fn, signature, args, shape)

    def for_person(self, access_token: str, claims: Mapping[str, Any]) -> PersonPgTransport:
        """A transport whose calls run as this person (the pool is shared)."""
        return PersonPgTransport(self, claims)

    def _execute(
        self,
        conn: psycopg.Connection[Any],
        fn: str,
        signature: Signature,
        args: Mapping[str, Any],
        shape: Shape,
    ) -> Any:
        key = (fn, tuple(args), shape)
        query = self._queries.get(key)
        params = {name: adapt(value, signature[name]) for name, value in args.items()}
        with conn.cursor(row_factory=dict_row) as cur:
            if query is None:
                query = build_call(fn, signature, args, shape).as_bytes(conn)
                self._queries[key] = query
            cur.execute(query, params)
            if shape == "void":
                return None
            if shape == "rows":
                return cur.fetchall()
            row = cur.fetchone()
            if shape == "row":
                return row
            return None if row is None else next(iter(row.values()))

    @contextmanager
    def _transaction(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        # Directly connected, the startup options already hold; behind a transaction pooler
        # the call runs in a transaction that sets them first (BEGIN, the settings and COMMIT:
        # three more round trips).
        if not self.transaction_pooler:
            yield
            return
        with conn.transaction():
            self._set_call_settings(conn)
            yield

    def _set_call_settings(self, conn: psycopg.Connection[Any]) -> None:
        # Inside a transaction: behind a transaction pooler, what the startup options would set.
        if self.transaction_pooler:
            conn.execute(_TRANSACTION_SETTINGS_SQL, {"timeout": self._statement_timeout})

    def ping(self) -> None:
        """Raise DatabaseError unless a pooled connection answers `select 1`."""
        with translate_errors("ping"), self._pool.connection() as conn:
            conn.execute("select 1")

    def close(self) -> None:
        """Close every pooled connection."""
        self._pool.close()

    def _signature(self, fn: str, args: Mapping[str, Any]) -> Signature:
        overloads = self._signatures.get(fn)
        if overloads is None:
            overloads = self._load_signatures(fn)
        for signature in overloads:
            if set(args) <= signature.keys():
                return signature
        wanted = ", ".join(args)
        raise DatabaseConstraintError(f"{fn}: no function {SCHEMA}.{fn}({wanted})", code="42883")

    def _load_signatures(self, fn: str) -> list[Signature]:
        with self._pool.connection() as conn:
            rows = conn.execute(_SIGNATURE_SQL, {"schema": SCHEMA, "fn": fn}).fetchall()
        by_oid: dict[int, Signature] = {}
        for oid, name, sql_type in rows:
            signature = by_oid.setdefault(oid, {})
            if name:
                signature[name] = sql_type
        # A function with no arguments has no rows in the unnest; it still exists if pg_proc
        # has it, but then an empty signature is all a call needs.
        overloads = list(by_oid.values()) or self._zero_arg_overload(fn)
        if overloads:
            # Not caching a miss: a migration may create the function while we run.
            with self._signatures_lock:
                self._signatures[fn] = overloads
        return overloads

    def _zero_arg_overload(self, fn: str) -> list[Signature]:
        with self._pool.connection() as conn:
            found = conn.execute(
                "select 1 from pg_catalog.pg_proc"
                " where pronamespace = %s::regnamespace and proname = %s",
                (SCHEMA, fn),
            ).fetchone()
        return [{}] if found else []


class PersonPgTransport:
    """The psycopg transport for one signed-in person: every call runs as them."""

    returns_common_types = True

    def __init__(self, base: PgTransport, claims: Mapping[str, Any]) -> None:
        self._base = base
        self._claims = dict(claims)

    def call(self, fn: str, args: Mapping[str, Any], shape: Shape) -> Any:
        """Run public.<fn> in a transaction as the person."""
        return self._base.call_as(self._claims, fn, args, shape)

    def ping(self) -> None:
        """The shared pool's readiness."""
        self._base.ping()

    def close(self) -> None:
        """Nothing to release: the pool belongs to the base transport."""
