"""Who is asking: Supabase access tokens verified, and the CSRF token of a session (pure).

An access token is accepted when its HS256 signature verifies with the project's JWT secret,
it has not expired, its audience is `authenticated` and its role is `authenticated`, exactly
what PostgREST would accept before running a request as that person.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

AUDIENCE = "authenticated"
PERSON_ROLE = "authenticated"
# Refresh this long before the access token expires, so a page never fails half-way.
REFRESH_MARGIN_SECONDS = 60


class NotSignedIn(Exception):
    """No usable access token: signed out, expired, forged or for another audience."""


@dataclass(frozen=True)
class Person:
    """A signed-in person, as their verified access token says."""

    user_id: str
    email: str
    operator: bool
    session_id: str
    expires_at: int
    access_token: str = field(repr=False)
    claims: Mapping[str, Any] = field(repr=False)

    def expires_within(self, seconds: float, now: float | None = None) -> bool:
        """Whether the token expires in less than `seconds`."""
        return self.expires_at - (time.time() if now is None else now) < seconds


def verify_access_token(token: str, secret: str, *, leeway: float = 0) -> Person:
    """The person of a valid access token; NotSignedIn otherwise."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=AUDIENCE,
            leeway=leeway,
            options={"require": ["exp", "sub", "aud", "role"]},
        )
    except jwt.PyJWTError as exc:
        raise NotSignedIn(str(exc)) from exc
    if claims.get("role") != PERSON_ROLE:
        raise NotSignedIn(f"role {claims.get('role')!r} is not a person's")
    app_metadata = claims.get("app_metadata") or {}
    return Person(
        user_id=str(claims["sub"]),
        email=str(claims.get("email") or ""),
        operator=bool(isinstance(app_metadata, dict) and app_metadata.get("operator") is True),
        session_id=str(claims.get("session_id") or ""),
        expires_at=int(claims["exp"]),
        access_token=token,
        claims=claims,
    )


def token_expiry(token: str) -> int | None:
    """The `exp` of a token without verifying it (to decide whether to refresh first)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    return int(exp) if isinstance(exp, int | float) else None


def csrf_token(secret: str, session_id: str) -> str:
    """The session's CSRF token: stable across refreshes, useless in another session."""
    return hmac.new(secret.encode(), f"csrf:{session_id}".encode(), hashlib.sha256).hexdigest()


def csrf_matches(secret: str, session_id: str, presented: str | None) -> bool:
    """Constant-time check of a presented CSRF token."""
    if not presented or not session_id:
        return False
    return hmac.compare_digest(presented.encode(), csrf_token(secret, session_id).encode())


def is_loopback_host(host: str) -> bool:
    """Whether a Host header names this machine (cookies then go without Secure)."""
    if host.startswith("["):  # [::1]:8080
        name = host[1 : host.find("]")] if "]" in host else host[1:]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
