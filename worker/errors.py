"""The worker's typed errors and the one place that decides transient vs permanent.

Every failure that reaches the queue is one of these, so `fail_job` gets an `error_type` and a
retry-after without guessing: a transient error is retried with backoff (never sooner than the
server asked), a permanent one goes to the dead-letter queue with a readable reason.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

ErrorType = Literal["transient", "permanent"]

# Statuses that mean "try again later". 409 is included because the Anthropic SDK treats it as a
# retryable lock conflict; 425 asks the client to replay later. Every other 4xx is our fault.
RETRYABLE_HTTP_STATUSES = frozenset({408, 409, 425, 429})


# Answers that mean the credentials were refused: they repeat on every call until someone fixes
# the key, so unlike other client errors they count against the service's circuit breaker.
AUTH_FAILURE_HTTP_STATUSES = frozenset({401, 403})


class WorkerError(Exception):
    """Base of every error the worker raises on purpose; `http_status` when an HTTP answer
    caused it."""

    _error_type: ErrorType = "permanent"

    def __init__(
        self, message: str, *, service: str | None = None, http_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.service = service
        self.http_status = http_status

    @property
    def is_auth_failure(self) -> bool:
        """Whether the service refused our credentials (HTTP 401 or 403)."""
        return self.http_status in AUTH_FAILURE_HTTP_STATUSES

    @property
    def error_type(self) -> ErrorType:
        """'transient' (retry later) or 'permanent' (dead-letter now)."""
        return self._error_type

    def __str__(self) -> str:
        return f"{self.service}: {self.message}" if self.service else self.message


class TransientError(WorkerError):
    """A failure that may succeed later; `retry_after` is the server's wish in seconds."""

    _error_type: ErrorType = "transient"

    def __init__(
        self,
        message: str,
        *,
        service: str | None = None,
        retry_after: float | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message, service=service, http_status=http_status)
        self.retry_after = None if retry_after is None else max(0.0, float(retry_after))

    @property
    def retry_after_seconds(self) -> int | None:
        """Retry-after rounded up to whole seconds, the unit `fail_job` takes."""
        return None if self.retry_after is None else math.ceil(self.retry_after)


class PermanentError(WorkerError):
    """A failure that retrying cannot fix (bad request, rejected credentials or recipient)."""

    _error_type: ErrorType = "permanent"


class CircuitOpenError(TransientError):
    """The service's circuit breaker is open: defer the job without spending an attempt."""

    def __init__(self, service: str, retry_after: float | None = None) -> None:
        super().__init__(f"circuit open for {service}", service=service, retry_after=retry_after)


class ConfigError(PermanentError):
    """The environment is missing or has malformed settings; `problems` lists each one."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems: tuple[str, ...] = (
            (problems,) if isinstance(problems, str) else tuple(problems)
        )
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration:\n{lines}")


class DatabaseError(TransientError):
    """The database could not be reached or answered with a retryable failure."""

    def __init__(
        self,
        message: str,
        *,
        service: str | None = "database",
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, service=service, retry_after=retry_after)
        self.code = code


class DatabaseConstraintError(PermanentError):
    """A constraint or data error from the database: the same call would fail again."""

    def __init__(
        self,
        message: str,
        *,
        service: str | None = "database",
        code: str | None = None,
        constraint: str | None = None,
    ) -> None:
        super().__init__(message, service=service)
        self.code = code
        self.constraint = constraint


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date), None if unusable."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds):
            return max(0.0, seconds)
        return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 HTTP-dates are always GMT; a naive result means "-0000", i.e. UTC too.
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def classify_http_status(
    status: int,
    retry_after_header: str | None = None,
    service: str | None = None,
    *,
    detail: str = "",
    now: datetime | None = None,
) -> WorkerError:
    """The typed error for a failed HTTP answer: 408/409/425/429/5xx transient, other 4xx permanent.

    Pass `now` to make an HTTP-date Retry-After deterministic in tests.
    """
    if status < 400:
        raise ValueError(f"HTTP {status} is not an error status")
    message = f"HTTP {status}" + (f": {detail}" if detail else "")
    if status in RETRYABLE_HTTP_STATUSES or status >= 500:
        return TransientError(
            message,
            service=service,
            retry_after=parse_retry_after(retry_after_header, now=now),
            http_status=status,
        )
    return PermanentError(message, service=service, http_status=status)


def classify_smtp_code(
    code: int, message: str | bytes = "", service: str | None = "smtp"
) -> WorkerError:
    """The typed error for an SMTP reply: 4xx (and no reply at all) transient, 5xx permanent."""
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    summary = f"SMTP {code}" + (f": {text.strip()}" if text.strip() else "")
    if 500 <= code <= 599:
        return PermanentError(summary, service=service)
    # 4xx is transient by definition (RFC 5321 4.2.1); smtplib reports a dropped connection as -1,
    # and any other unexpected code is safer retried a bounded number of times than dropped.
    return TransientError(summary, service=service)


def classify_network_error(
    exc: BaseException, action: str, service: str | None
) -> TransientError | None:
    """The transient error for a timeout, TLS or socket failure while doing `action`; None when
    exc is none of these, so the protocol's own cases decide."""
    if isinstance(exc, TimeoutError):
        return TransientError(f"{action}: timed out", service=service)
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = getattr(exc, "verify_message", None) or exc
        return TransientError(
            f"{action}: TLS certificate verification failed: {reason}", service=service
        )
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or exc
        return TransientError(f"{action}: TLS error: {reason}", service=service)
    if isinstance(exc, OSError):
        return TransientError(f"{action}: connection failed: {exc}", service=service)
    return None
