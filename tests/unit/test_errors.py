"""The error tree and the one transient/permanent classification used by every client."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from worker import errors

NOW = datetime(2025, 3, 10, 12, 0, 0, tzinfo=UTC)


def test_error_types_follow_the_tree() -> None:
    assert errors.TransientError("x").error_type == "transient"
    assert errors.PermanentError("x").error_type == "permanent"
    assert errors.CircuitOpenError("claude", 30).error_type == "transient"
    assert errors.DatabaseError("down").error_type == "transient"
    assert errors.DatabaseConstraintError("dup").error_type == "permanent"
    assert errors.ConfigError(["A is missing"]).error_type == "permanent"
    assert isinstance(errors.CircuitOpenError("smtp"), errors.TransientError)
    assert isinstance(errors.ConfigError("x"), errors.WorkerError)


def test_errors_carry_service_and_retry_after() -> None:
    exc = errors.TransientError("HTTP 429", service="shopify", retry_after=2.2)
    assert exc.service == "shopify"
    assert exc.retry_after == 2.2
    assert exc.retry_after_seconds == 3
    assert str(exc) == "shopify: HTTP 429"
    assert errors.TransientError("x", retry_after=-5).retry_after == 0.0
    assert errors.TransientError("x").retry_after_seconds is None
    circuit = errors.CircuitOpenError("smtp:store-1", retry_after=45)
    assert circuit.service == "smtp:store-1"
    assert circuit.retry_after_seconds == 45
    assert errors.DatabaseError("timeout").service == "database"
    constraint = errors.DatabaseConstraintError("dup", code="23505", constraint="uq")
    assert (constraint.code, constraint.constraint) == ("23505", "uq")


def test_config_error_lists_every_problem() -> None:
    exc = errors.ConfigError(["WORKER_SECRET is missing", "PORT must be a positive integer"])
    assert exc.problems == ("WORKER_SECRET is missing", "PORT must be a positive integer")
    assert "WORKER_SECRET is missing" in str(exc)
    assert "PORT must be a positive integer" in str(exc)


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 502, 503, 504, 529])
def test_retryable_http_statuses_are_transient(status: int) -> None:
    exc = errors.classify_http_status(status, None, "claude")
    assert isinstance(exc, errors.TransientError)
    assert exc.service == "claude"
    assert exc.retry_after is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 413, 422])
def test_client_errors_are_permanent(status: int) -> None:
    exc = errors.classify_http_status(status, "30", "shopify", detail="bad token")
    assert isinstance(exc, errors.PermanentError)
    assert exc.error_type == "permanent"
    assert str(exc) == f"shopify: HTTP {status}: bad token"
    assert exc.http_status == status
    assert exc.is_auth_failure == (status in (401, 403))


def test_errors_not_from_an_http_answer_are_never_auth_failures() -> None:
    # the wording does not matter: only the status an HTTP answer carried does
    assert not errors.PermanentError("HTTP 401 in the text only").is_auth_failure
    assert errors.classify_http_status(503, None).http_status == 503


def test_retry_after_in_seconds_is_honoured() -> None:
    exc = errors.classify_http_status(429, "17", "shopify")
    assert isinstance(exc, errors.TransientError)
    assert exc.retry_after == 17.0
    exc = errors.classify_http_status(529, " 1.5 ", "claude")
    assert isinstance(exc, errors.TransientError)
    assert exc.retry_after_seconds == 2


def test_retry_after_as_http_date_is_relative_to_now() -> None:
    exc = errors.classify_http_status(503, "Mon, 10 Mar 2025 12:02:00 GMT", "claude", now=NOW)
    assert isinstance(exc, errors.TransientError)
    assert exc.retry_after == 120.0
    past = errors.classify_http_status(503, "Mon, 10 Mar 2025 11:00:00 GMT", "claude", now=NOW)
    assert isinstance(past, errors.TransientError)
    assert past.retry_after == 0.0


@pytest.mark.parametrize("value", ["", "soon", "nan", "inf", "Mon, 99 Foo 2025"])
def test_unusable_retry_after_is_ignored(value: str) -> None:
    assert errors.parse_retry_after(value, now=NOW) is None


def test_success_status_is_not_an_error() -> None:
    with pytest.raises(ValueError):
        errors.classify_http_status(200, None, "shopify")


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (421, b"4.7.0 Try again later, closing connection", errors.TransientError),
        (450, "4.2.0 Mailbox busy", errors.TransientError),
        (451, "4.7.1 Greylisted, please retry in 5 minutes", errors.TransientError),
        (452, "4.2.2 Mailbox full", errors.TransientError),
        (-1, "", errors.TransientError),
        (
            550,
            b"5.1.1 <a@example.com>: Recipient address rejected: User unknown",
            errors.PermanentError,
        ),
        (553, "5.7.1 Sender address rejected", errors.PermanentError),
        (554, "5.7.1 Message rejected as spam", errors.PermanentError),
    ],
)
def test_smtp_codes(code: int, message: str | bytes, expected: type[errors.WorkerError]) -> None:
    exc = errors.classify_smtp_code(code, message)
    assert type(exc) is expected
    assert exc.service == "smtp"
    assert str(exc).startswith(f"smtp: SMTP {code}")


def test_smtp_message_bytes_are_decoded_into_the_reason() -> None:
    exc = errors.classify_smtp_code(550, b"5.1.1 User unknown", service="smtp:store-9")
    assert str(exc) == "smtp:store-9: SMTP 550: 5.1.1 User unknown"
