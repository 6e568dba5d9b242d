"""A local stand-in for Supabase Auth (GoTrue), for tests, the demo and benchmarks.

It serves the endpoints supabase-py's auth client calls, with GoTrue's shapes:
`POST /auth/v1/token?grant_type=password|refresh_token`, `GET /auth/v1/user`,
`POST /auth/v1/logout?scope=global|local|others`, `POST /auth/v1/admin/users` and
`GET /auth/v1/health`. Like the real service it keeps people in `auth.users` (passwords as
bcrypt hashes, cost 10, made by pgcrypto's `crypt` in the `$2a$` form GoTrue writes), sessions in
`auth.sessions` and rotating refresh tokens in `auth.refresh_tokens`, and signs HS256 access
tokens with the project's JWT secret carrying GoTrue's claims (iss, aud, exp, iat, sub, email,
phone, app_metadata, user_metadata, role, aal, amr, session_id, is_anonymous). Errors use the
2024-01-01 API version's body `{"code", "error_code", "msg"}`.

Like the platform's gateway in front of GoTrue, it requires an `apikey` header holding a JWT
signed with the same secret. Never part of the product image.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

AUTH_PREFIX = "/auth/v1"
API_VERSION = "2024-01-01"
ACCESS_TOKEN_SECONDS = 3600
MIN_PASSWORD_CHARS = 6  # GoTrue's default minimum
BCRYPT_COST = 10  # golang.org/x/crypto/bcrypt DefaultCost, what GoTrue uses
ADMIN_ROLES = frozenset({"service_role", "supabase_admin"})
# A rotated refresh token may be presented again this long after (two tabs refreshing at once),
# GoTrue's REFRESH_TOKEN_REUSE_INTERVAL default.
REFRESH_REUSE_SECONDS = 10

_USER_SQL = """
select id::text, aud, role, email, email_confirmed_at, phone, last_sign_in_at,
       coalesce(raw_app_meta_data, '{}') as app_metadata,
       coalesce(raw_user_meta_data, '{}') as user_metadata,
       created_at, updated_at, is_anonymous
from auth.users where id = %s and deleted_at is null
"""


class AuthError(Exception):
    """An error answer in GoTrue's shape."""

    def __init__(self, status: int, error_code: str, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.error_code = error_code
        self.msg = msg


def service_role_key(jwt_secret: str, *, ttl_seconds: int = 10 * 365 * 24 * 3600) -> str:
    """A service_role API key as the platform issues them: a JWT signed with the project secret."""
    now = int(time.time())
    return jwt.encode(
        {"iss": "supabase-demo", "role": "service_role", "iat": now, "exp": now + ttl_seconds},
        jwt_secret,
        algorithm="HS256",
    )


def anon_key(jwt_secret: str, *, ttl_seconds: int = 10 * 365 * 24 * 3600) -> str:
    """The anon API key: a JWT with role anon signed with the project secret."""
    now = int(time.time())
    return jwt.encode(
        {"iss": "supabase-demo", "role": "anon", "iat": now, "exp": now + ttl_seconds},
        jwt_secret,
        algorithm="HS256",
    )


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def user_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """GoTrue's user object."""
    return {
        "id": row["id"],
        "aud": row["aud"] or "authenticated",
        "role": row["role"] or "authenticated",
        "email": row["email"] or "",
        "email_confirmed_at": _iso(row["email_confirmed_at"]),
        "phone": row["phone"] or "",
        "confirmed_at": _iso(row["email_confirmed_at"]),
        "last_sign_in_at": _iso(row["last_sign_in_at"]),
        "app_metadata": row["app_metadata"],
        "user_metadata": row["user_metadata"],
        "identities": [],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
        "is_anonymous": bool(row["is_anonymous"]),
    }


class AuthService:
    """The endpoints' logic over one database; the HTTP layer only routes to it."""

    def __init__(self, database_url: str, jwt_secret: str, issuer: str) -> None:
        self.database_url = database_url
        self.jwt_secret = jwt_secret
        self.issuer = issuer

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.database_url, row_factory=dict_row, autocommit=False)

    # -- tokens -------------------------------------------------------------------------------

    def decode(self, token: str, *, audience: str | None = None) -> dict[str, Any]:
        """Verify signature and expiry (and audience when given); 401 otherwise."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.jwt_secret,
                algorithms=["HS256"],
                audience=audience,
                options={"verify_aud": audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError(401, "bad_jwt", "invalid JWT: token is expired") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(401, "bad_jwt", f"invalid JWT: {exc}") from exc
        return claims

    def _access_token(self, user: Mapping[str, Any], session_id: str) -> tuple[str, int]:
        now = int(time.time())
        exp = now + ACCESS_TOKEN_SECONDS
        claims = {
            "iss": self.issuer,
            "aud": user["aud"] or "authenticated",
            "exp": exp,
            "iat": now,
            "sub": user["id"],
            "email": user["email"] or "",
            "phone": user["phone"] or "",
            "app_metadata": user["app_metadata"],
            "user_metadata": user["user_metadata"],
            "role": user["role"] or "authenticated",
            "aal": "aal1",
            "amr": [{"method": "password", "timestamp": now}],
            "session_id": session_id,
            "is_anonymous": bool(user["is_anonymous"]),
        }
        return jwt.encode(claims, self.jwt_secret, algorithm="HS256"), exp

    def _session_json(
        self, user: Mapping[str, Any], session_id: str, refresh_token: str
    ) -> dict[str, Any]:
        access, exp = self._access_token(user, session_id)
        return {
            "access_token": access,
            "token_type": "bearer",
            "expires_in": ACCESS_TOKEN_SECONDS,
            "expires_at": exp,
            "refresh_token": refresh_token,
            "user": user_json(user),
        }

    @staticmethod
    def _new_refresh_token(
        cur: psycopg.Cursor[Any], user_id: str, session_id: str, parent: str | None
    ) -> str:
        token = secrets.token_urlsafe(9)  # 12 characters, like GoTrue's
        cur.execute(
            "insert into auth.refresh_tokens (token, user_id, revoked, parent, session_id)"
            " values (%s, %s, false, %s, %s)",
            (token, user_id, parent, session_id),
        )
        return token

    # -- endpoints ----------------------------------------------------------------------------

    def password_grant(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Sign in with email and password."""
        email = str(body.get("email") or "").strip().lower()
        password = str(body.get("password") or "")
        if not email or not password:
            raise AuthError(400, "validation_failed", "missing email or phone")
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute(
                "select id::text, email_confirmed_at, banned_until from auth.users"
                " where lower(email) = %s and deleted_at is null"
                " and encrypted_password = extensions.crypt(%s, encrypted_password)",
                (email, password),
            )
            found = cur.fetchone()
            if found is None:
                raise AuthError(400, "invalid_credentials", "Invalid login credentials")
            if found["email_confirmed_at"] is None:
                raise AuthError(400, "email_not_confirmed", "Email not confirmed")
            if found["banned_until"] is not None:
                cur.execute("select %s > now() as banned", (found["banned_until"],))
                if _one(cur)["banned"]:
                    raise AuthError(400, "user_banned", "User is banned")
            session_id = str(uuid.uuid4())
            cur.execute(
                "insert into auth.sessions (id, user_id, aal) values (%s, %s, 'aal1')",
                (session_id, found["id"]),
            )
            cur.execute(
                "update auth.users set last_sign_in_at = now(), updated_at = now()"
                " where id = %s",
                (found["id"],),
            )
            refresh = self._new_refresh_token(cur, found["id"], session_id, None)
            cur.execute(_USER_SQL, (found["id"],))
            user = _one(cur)
        return self._session_json(user, session_id, refresh)

    def refresh_grant(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Rotate a refresh token: the old one is revoked, a new one issued in the same session."""
        token = str(body.get("refresh_token") or "")
        if not token:
            raise AuthError(400, "validation_failed", "Refresh Token is required")
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute(
                "select t.token, t.user_id, t.revoked, t.updated_at, t.session_id::text"
                " from auth.refresh_tokens t join auth.sessions s on s.id = t.session_id"
                " where t.token = %s for update of t",
                (token,),
            )
            row = cur.fetchone()
            if row is None:
                raise AuthError(
                    400, "refresh_token_not_found", "Invalid Refresh Token: Refresh Token Not Found"
                )
            if row["revoked"]:
                cur.execute(
                    "select extract(epoch from now() - %s) as age", (row["updated_at"],)
                )
                if _one(cur)["age"] > REFRESH_REUSE_SECONDS:
                    # Reuse of a rotated token: someone else may hold it; end the session.
                    cur.execute("delete from auth.sessions where id = %s", (row["session_id"],))
                    conn.commit()
                    raise AuthError(
                        400,
                        "refresh_token_already_used",
                        "Invalid Refresh Token: Already Used",
                    )
            cur.execute(
                "update auth.refresh_tokens set revoked = true, updated_at = now()"
                " where token = %s",
                (token,),
            )
            cur.execute(
                "update auth.sessions set refreshed_at = now() at time zone 'utc',"
                " updated_at = now() where id = %s",
                (row["session_id"],),
            )
            new = self._new_refresh_token(cur, row["user_id"], row["session_id"], token)
            cur.execute(_USER_SQL, (row["user_id"],))
            user = cur.fetchone()
            if user is None:
                raise AuthError(400, "user_not_found", "User not found")
        return self._session_json(user, row["session_id"], new)

    def _session_claims(self, authorization: str | None) -> dict[str, Any]:
        token = _bearer(authorization)
        if token is None:
            raise AuthError(401, "no_authorization", "This endpoint requires a valid Bearer token")
        return self.decode(token)

    def get_user(self, authorization: str | None) -> dict[str, Any]:
        """The signed-in person, read fresh from auth.users."""
        claims = self._session_claims(authorization)
        with self._connect() as conn, conn.cursor() as cur:
            session_id = claims.get("session_id")
            if session_id:
                cur.execute("select 1 from auth.sessions where id = %s", (session_id,))
                if cur.fetchone() is None:
                    raise AuthError(
                        403, "session_not_found",
                        "Session from session_id claim in JWT does not exist",
                    )
            cur.execute(_USER_SQL, (claims.get("sub"),))
            user = cur.fetchone()
        if user is None:
            raise AuthError(403, "user_not_found", "User from sub claim in JWT does not exist")
        return user_json(user)

    def logout(self, authorization: str | None, scope: str) -> None:
        """End this session (local), every session (global) or every other one (others)."""
        if scope not in ("global", "local", "others"):
            raise AuthError(400, "validation_failed", "Unsupported logout scope")
        claims = self._session_claims(authorization)
        session_id, user_id = claims.get("session_id"), claims.get("sub")
        with self._connect() as conn, conn.cursor() as cur:
            if scope == "local":
                cur.execute("delete from auth.sessions where id = %s", (session_id,))
            elif scope == "others":
                cur.execute(
                    "delete from auth.sessions where user_id = %s and id <> %s",
                    (user_id, session_id),
                )
            else:
                cur.execute("delete from auth.sessions where user_id = %s", (user_id,))

    def admin_create_user(
        self, authorization: str | None, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Create a person (service role only), like GoTrue's POST /admin/users."""
        claims = self._session_claims(authorization)
        if claims.get("role") not in ADMIN_ROLES:
            raise AuthError(403, "not_admin", "User not allowed")
        email = str(body.get("email") or "").strip().lower()
        password = body.get("password")
        if not email or "@" not in email:
            raise AuthError(400, "validation_failed", "Unable to validate email address")
        if password is not None and len(str(password)) < MIN_PASSWORD_CHARS:
            raise AuthError(
                422,
                "weak_password",
                f"Password should be at least {MIN_PASSWORD_CHARS} characters.",
            )
        app_metadata = {"provider": "email", "providers": ["email"]}
        app_metadata.update(dict(body.get("app_metadata") or {}))
        user_metadata = dict(body.get("user_metadata") or {})
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute("select 1 from auth.users where lower(email) = %s", (email,))
            if cur.fetchone() is not None:
                raise AuthError(
                    422,
                    "email_exists",
                    "A user with this email address has already been registered",
                )
            cur.execute(
                "insert into auth.users (instance_id, id, aud, role, email, encrypted_password,"
                " email_confirmed_at, raw_app_meta_data, raw_user_meta_data, created_at,"
                " updated_at, is_sso_user, is_anonymous)"
                " values ('00000000-0000-0000-0000-000000000000', gen_random_uuid(),"
                " 'authenticated', 'authenticated', %s,"
                " case when %s::text is null then ''"
                "      else extensions.crypt(%s, extensions.gen_salt('bf', %s)) end,"
                " case when %s then now() end, %s, %s, now(), now(), false, false)"
                " returning id::text",
                (
                    email,
                    password,
                    password,
                    BCRYPT_COST,
                    bool(body.get("email_confirm")),
                    Jsonb(app_metadata),
                    Jsonb(user_metadata),
                ),
            )
            user_id = _one(cur)["id"]
            cur.execute(_USER_SQL, (user_id,))
            user = _one(cur)
        return user_json(user)


def _one(cur: psycopg.Cursor[Any]) -> dict[str, Any]:
    row = cur.fetchone()
    if row is None:
        raise AuthError(500, "unexpected_failure", "the database returned no row")
    return dict(row)


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _handler_for(server: AuthServer) -> type[BaseHTTPRequestHandler]:
    service = server.service

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def _dispatch(self, method: str) -> None:
            split = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(split.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            path = split.path
            try:
                if not path.startswith(AUTH_PREFIX):
                    raise AuthError(404, "not_found", "Not found")
                route = path[len(AUTH_PREFIX):].rstrip("/") or "/"
                if route == "/health" and method == "GET":
                    self._send(200, {"version": "devstack", "name": "GoTrue",
                                     "description": "local Auth stand-in"})
                    return
                self._check_apikey()
                body = json.loads(raw or b"{}") if raw else {}
                if not isinstance(body, dict):
                    raise AuthError(400, "bad_json", "Could not parse request body as JSON")
                self._route(method, route, query, body)
            except AuthError as exc:
                self._send(exc.status, {"code": exc.status, "error_code": exc.error_code,
                                        "msg": exc.msg})
            except json.JSONDecodeError:
                self._send(400, {"code": 400, "error_code": "bad_json",
                                 "msg": "Could not parse request body as JSON"})
            except psycopg.Error as exc:
                self._send(500, {"code": 500, "error_code": "unexpected_failure",
                                 "msg": f"Database error: {type(exc).__name__}"})

        def _check_apikey(self) -> None:
            key = self.headers.get("apikey")
            if not key:
                raise AuthError(401, "no_api_key", "No API key found in request")
            try:
                jwt.decode(key, service.jwt_secret, algorithms=["HS256"],
                           options={"verify_aud": False})
            except jwt.PyJWTError as exc:
                raise AuthError(401, "invalid_api_key", "Invalid API key") from exc

        def _route(
            self, method: str, route: str, query: dict[str, str], body: dict[str, Any]
        ) -> None:
            auth = self.headers.get("Authorization")
            if route == "/token" and method == "POST":
                grant = query.get("grant_type")
                if grant == "password":
                    self._send(200, service.password_grant(body))
                elif grant == "refresh_token":
                    self._send(200, service.refresh_grant(body))
                else:
                    raise AuthError(400, "unsupported_grant_type", "unsupported_grant_type")
            elif route == "/user" and method == "GET":
                self._send(200, service.get_user(auth))
            elif route == "/logout" and method == "POST":
                service.logout(auth, query.get("scope", "global"))
                self._send(204, None)
            elif route == "/admin/users" and method == "POST":
                self._send(200, service.admin_create_user(auth, body))
            else:
                raise AuthError(404, "not_found", "Not found")

        def _send(self, status: int, payload: Any) -> None:
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status, HTTPStatus(status).phrase)
            self.send_header("X-Supabase-Api-Version", API_VERSION)
            if payload is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data:
                self.wfile.write(data)

    return Handler


class AuthServer:
    """The stand-in on 127.0.0.1 (a free port unless given); `url` is what SUPABASE_AUTH_URL
    takes."""

    def __init__(
        self, database_url: str, jwt_secret: str, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._httpd = ThreadingHTTPServer((host, port), BaseHTTPRequestHandler)
        self._httpd.daemon_threads = True
        address = self._httpd.server_address
        self.host, self.port = str(address[0]), int(address[1])
        self.service = AuthService(database_url, jwt_secret, issuer=self.url)
        self._httpd.RequestHandlerClass = _handler_for(self)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The Auth base URL, e.g. http://127.0.0.1:PORT/auth/v1."""
        return f"http://{self.host}:{self.port}{AUTH_PREFIX}"

    def start(self) -> AuthServer:
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="auth-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> AuthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """`python -m worker.devstack.auth DATABASE_URL JWT_SECRET [PORT]`: serve until killed."""
    import sys

    if len(sys.argv) < 3:
        raise SystemExit("usage: python -m worker.devstack.auth DATABASE_URL JWT_SECRET [PORT]")
    port = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    server = AuthServer(sys.argv[1], sys.argv[2], port=port)
    print(f"SUPABASE_AUTH_URL={server.url}", flush=True)
    server.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
