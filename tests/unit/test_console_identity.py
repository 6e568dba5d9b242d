"""The console's pure pieces: access-token verification, the CSRF token, loopback hosts, and
the health page's SVG charts."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from worker.console import charts
from worker.console.identity import (
    NotSignedIn,
    csrf_matches,
    csrf_token,
    is_loopback_host,
    token_expiry,
    verify_access_token,
)

SECRET = "a-test-secret-that-is-long-enough-for-hs256-0123"


def token(**overrides: object) -> str:
    now = int(time.time())
    claims = {
        "sub": "00000000-0000-4000-8000-000000000001",
        "aud": "authenticated",
        "role": "authenticated",
        "exp": now + 3600,
        "iat": now,
        "email": "ana@example.test",
        "session_id": "11111111-1111-4111-8111-111111111111",
        "app_metadata": {"provider": "email"},
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def test_a_valid_token_names_the_person() -> None:
    person = verify_access_token(token(), SECRET)
    assert person.user_id == "00000000-0000-4000-8000-000000000001"
    assert person.email == "ana@example.test"
    assert person.operator is False
    assert not person.expires_within(60)


def test_operators_are_marked_in_app_metadata_only() -> None:
    assert verify_access_token(token(app_metadata={"operator": True}), SECRET).operator
    # user_metadata is the person's own to write: it never makes an operator.
    forged = token(user_metadata={"operator": True}, app_metadata={"operator": "yes"})
    assert verify_access_token(forged, SECRET).operator is False


@pytest.mark.parametrize(
    "bad",
    [
        {"exp": int(time.time()) - 1},
        {"aud": "somebody-else"},
        {"role": "service_role"},
        {"role": "anon"},
        {"sub": None},
        {"exp": None},
    ],
)
def test_expired_foreign_or_privileged_tokens_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(NotSignedIn):
        verify_access_token(token(**bad), SECRET)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    other = jwt.encode(jwt.decode(token(), SECRET, algorithms=["HS256"], audience="authenticated"),
                       "another-secret-that-is-long-enough-for-hs256!!", algorithm="HS256")
    with pytest.raises(NotSignedIn):
        verify_access_token(other, SECRET)
    none_alg = jwt.encode({"sub": "x", "aud": "authenticated", "role": "authenticated",
                           "exp": int(time.time()) + 60}, key=None, algorithm="none")
    with pytest.raises(NotSignedIn):
        verify_access_token(none_alg, SECRET)


def test_token_expiry_reads_exp_without_verifying() -> None:
    assert token_expiry(token(exp=1234567890)) == 1234567890
    assert token_expiry("not a token") is None


def test_csrf_token_is_per_session_and_checked_in_constant_time() -> None:
    a = csrf_token(SECRET, "session-a")
    assert a == csrf_token(SECRET, "session-a")
    assert a != csrf_token(SECRET, "session-b")
    assert csrf_matches(SECRET, "session-a", a)
    assert not csrf_matches(SECRET, "session-b", a)
    assert not csrf_matches(SECRET, "session-a", None)
    assert not csrf_matches(SECRET, "", a)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:8080", True),
        ("localhost", True),
        ("[::1]:8080", True),
        ("127.0.0.2", True),
        ("console.example.com", False),
        ("10.0.0.1:80", False),
        ("support.fly.dev", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_line_chart_draws_points_and_escapes_its_title() -> None:
    start = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    times = [start + timedelta(minutes=5 * i) for i in range(4)]
    svg = charts.line_chart("Jobs <completed>", times, [1, None, 4, 2])
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "Jobs &lt;completed&gt;" in svg and "<completed>" not in svg
    assert svg.count(",") >= 3  # three points in the polyline
    assert "00:00" in svg and "00:15 UTC" in svg


def test_line_chart_without_data_says_so() -> None:
    assert "no data in this window" in charts.line_chart("Depth", [], [])


def test_line_chart_names_the_day_when_the_window_crosses_midnight() -> None:
    end = datetime(2026, 12, 1, 16, 27, tzinfo=UTC)
    svg = charts.line_chart("Depth", [end - timedelta(hours=23), end], [1, 2])
    assert ">30 Nov 17:27<" in svg and ">16:27 UTC<" in svg
    same_day = charts.line_chart("Depth", [end - timedelta(hours=2), end], [1, 2])
    assert ">14:27<" in same_day
