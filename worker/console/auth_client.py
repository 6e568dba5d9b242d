"""Sign-in, refresh, sign-out and person creation through supabase-py's auth client.

The console never keeps an auth client's session in memory between requests: each call builds
a client without persistence, so two people's sessions cannot mix. The browser's cookies hold
the tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
import jwt
from supabase_auth import SyncGoTrueAdminAPI, SyncGoTrueClient
from supabase_auth.errors import AuthApiError, AuthError, AuthRetryableError

from worker.errors import ConfigError, PermanentError, TransientError

if TYPE_CHECKING:
    from worker.config import Settings

DEFAULT_TIMEOUT_SECONDS = 10.0
ADMIN_KEY_SECONDS = 300  # a minted admin key lives for one command


class SignInRefused(PermanentError):
    """Auth refused the credentials or the refresh token (wrong password, revoked session)."""


@dataclass(frozen=True)
class Tokens:
    """A session as Auth issued it."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: int


def _error(exc: AuthError) -> Exception:
    if isinstance(exc, AuthRetryableError):
        return TransientError(f"auth: {exc.message}", service="auth")
    status = getattr(exc, "status", None)
    if isinstance(exc, AuthApiError) and status is not None and status >= 500:
        return TransientError(f"auth: {exc.message}", service="auth", http_status=status)
    return SignInRefused(f"auth: {exc.message}", service="auth", http_status=status)


class AuthClient:
    """supabase_auth calls against SUPABASE_AUTH_URL with the anon key."""

    def __init__(
        self, url: str, anon_key: str, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        self.url = url.rstrip("/")
        self.anon_key = anon_key
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_seconds))

    def _client(self) -> SyncGoTrueClient:
        return SyncGoTrueClient(
            url=self.url,
            headers={"apikey": self.anon_key, "Authorization": f"Bearer {self.anon_key}"},
            auto_refresh_token=False,
            persist_session=False,
            http_client=self._http,
        )

    def sign_in(self, email: str, password: str) -> Tokens:
        """Password sign-in; SignInRefused for wrong credentials."""
        try:
            response = self._client().sign_in_with_password(
                {"email": email, "password": password}
            )
        except AuthError as exc:
            raise _error(exc) from exc
        return _tokens(response.session)

    def refresh(self, refresh_token: str) -> Tokens:
        """A new session for a refresh token (Auth rotates it)."""
        try:
            response = self._client().refresh_session(refresh_token)
        except AuthError as exc:
            raise _error(exc) from exc
        return _tokens(response.session)

    def sign_out(self, access_token: str) -> None:
        """End this session at Auth (its refresh tokens stop working)."""
        try:
            self._client().admin.sign_out(access_token, "local")
        except AuthError as exc:
            if getattr(exc, "status", None) in (401, 403, 404):
                return  # already gone: the effect asked for
            raise _error(exc) from exc

    def create_user(self, admin_key: str, email: str, password: str, *, operator: bool) -> str:
        """Create a confirmed person through the Auth admin API; returns their id."""
        admin = SyncGoTrueAdminAPI(
            url=self.url,
            headers={"apikey": admin_key, "Authorization": f"Bearer {admin_key}"},
            http_client=self._http,
        )
        attributes: dict[str, object] = {
            "email": email,
            "password": password,
            "email_confirm": True,
        }
        if operator:
            attributes["app_metadata"] = {"operator": True}
        try:
            response = admin.create_user(attributes)  # type: ignore[arg-type]
        except AuthError as exc:
            raise _error(exc) from exc
        return str(response.user.id)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()


def _tokens(session: object) -> Tokens:
    if session is None:
        raise SignInRefused("auth: no session in the answer", service="auth")
    access = str(getattr(session, "access_token", ""))
    refresh = str(getattr(session, "refresh_token", ""))
    expires_at = getattr(session, "expires_at", None)
    if not access or not refresh or expires_at is None:
        raise SignInRefused("auth: incomplete session in the answer", service="auth")
    return Tokens(access, refresh, int(expires_at))


def admin_key(settings: Settings) -> str:
    """The key for the Auth admin API: the project's secret (or legacy service_role) key, else a
    short-lived service_role JWT signed with SUPABASE_JWT_SECRET (what the legacy key is)."""
    if settings.supabase_key:
        return settings.supabase_key
    if not settings.supabase_jwt_secret:
        raise ConfigError(
            ["set SUPABASE_SECRET_KEY, SUPABASE_SERVICE_ROLE_KEY or SUPABASE_JWT_SECRET"]
        )
    now = int(time.time())
    claims = {"role": "service_role", "iss": "support-worker", "iat": now,
              "exp": now + ADMIN_KEY_SECONDS}
    return jwt.encode(claims, settings.supabase_jwt_secret, algorithm="HS256")
