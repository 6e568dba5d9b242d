"""The contract both database backends share: the Transport protocol, result normalisation and
the one SQLSTATE classification that decides transient vs permanent.

Kept free of I/O so the rules are unit-tested without a server and cannot drift between the
psycopg and PostgREST backends.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, Protocol
from uuid import UUID

from worker.errors import DatabaseConstraintError, DatabaseError

Shape = Literal["scalar", "rows", "row", "void"]
Row = dict[str, Any]

# SQLSTATE classes (first two characters) that describe the server or the connection rather than
# the call: the same call may well succeed later. 08 connection, 40 serialization/deadlock,
# 53 insufficient resources, 57 operator intervention (statement timeout, admin shutdown),
# 58 system error, XX internal error (poolers report "tenant not found" and the like as XX000).
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58", "XX"})
# 55P03 lock_not_available and 55006 object_in_use clear once the other holder is done.
# 26000 invalid_sql_statement_name ("prepared statement ... does not exist") and 42P05
# duplicate_prepared_statement: our SQL never PREPAREs, so these come from the driver's prepared
# statements meeting a transaction pooler's shared server connections, never from the email.
# (The poolers' own errors are 08P01 (pgbouncer) and XX000 (Supavisor), covered by class.)
TRANSIENT_SQLSTATES = frozenset({"55P03", "55006", "26000", "42P05"})
# PostgREST's own codes for "cannot reach the database right now": PGRST000 connection,
# PGRST001 internal connection error, PGRST002 schema cache not loaded, PGRST003 pool timeout.
TRANSIENT_PGRST_CODES = frozenset({"PGRST000", "PGRST001", "PGRST002", "PGRST003"})

_SQLSTATE = re.compile(r"^[0-9A-Z]{5}$")
_CONSTRAINT_IN_MESSAGE = re.compile(r'constraint "([^"]+)"')


class Transport(Protocol):
    """One SQL function call per `call`, each its own transaction (as PostgREST does).

    A transport whose rows already hold the common types (see normalize_row) may say so with a
    class attribute `returns_common_types = True`; Database then passes its rows through.
    """

    def call(self, fn: str, args: Mapping[str, Any], shape: Shape) -> Any:
        """Call public.<fn> with named arguments (SQL names, `p_` prefix included)."""
        ...

    def ping(self) -> None:
        """Raise DatabaseError unless the database answers (readiness)."""
        ...

    def close(self) -> None:
        """Release connections; the transport is unusable afterwards."""
        ...


def is_transient_code(code: str | None) -> bool:
    """Whether a SQLSTATE or PostgREST error code means "retry later"."""
    if not code:
        return False
    if code in TRANSIENT_PGRST_CODES:
        return True
    if code.startswith("PGRST") or not _SQLSTATE.match(code):
        return False
    return code in TRANSIENT_SQLSTATES or code[:2] in TRANSIENT_SQLSTATE_CLASSES


def error_for_code(
    fn: str,
    message: str,
    code: str | None,
    *,
    constraint: str | None = None,
    retry_after: float | None = None,
) -> DatabaseError | DatabaseConstraintError:
    """The typed error for a database failure carrying a SQLSTATE (or PostgREST code)."""
    text = f"{fn}: {message}"
    if is_transient_code(code):
        return DatabaseError(text, code=code, retry_after=retry_after)
    if constraint is None:
        found = _CONSTRAINT_IN_MESSAGE.search(message)
        constraint = found.group(1) if found else None
    return DatabaseConstraintError(text, code=code, constraint=constraint)


def _utc(value: datetime) -> datetime:
    # A naive value can only come from a `timestamp` column, which our schema stores in UTC.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value if value.tzinfo is UTC else value.astimezone(UTC)


# Types that need no conversion: checked first by exact type, because every claimed job row goes
# through here and most of its columns are these (the queue's drain is bound by this loop).
_AS_IS = frozenset({str, int, float, bool, type(None)})


def normalize_value(value: Any) -> Any:
    """Driver types to the common ones: UUID -> str, datetimes -> aware UTC, Decimal -> number."""
    if type(value) in _AS_IS:
        return value
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, list):
        return [normalize_value(item) for item in value]
    if isinstance(value, dict):
        return {key: normalize_value(item) for key, item in value.items()}
    return value


def is_timestamp_column(name: str) -> bool:
    """Our schema's naming rule: timestamp columns end in `_at` or `_until`."""
    return name.endswith(("_at", "_until"))


def normalize_row(row: Mapping[str, Any]) -> Row:
    """A row as a dict with common types; JSON timestamps (PostgREST, jsonb) become datetimes."""
    result: Row = {}
    for key, value in row.items():
        if type(value) is str:
            result[key] = _parse_timestamp(value) if is_timestamp_column(key) else value
        else:
            result[key] = normalize_value(value)
    return result


def _parse_timestamp(text: str) -> Any:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return text
    return _utc(parsed)


def is_null_row(row: Mapping[str, Any] | None) -> bool:
    """Whether a composite result stands for NULL (a function returning NULL gives all nulls)."""
    return row is None or all(value is None for value in row.values())
