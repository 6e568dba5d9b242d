"""Proving SMTP settings without sending anything: connect, TLS, AUTH, QUIT.

Used by `python -m worker stores check`. It opens the session with worker.smtp's own `connect`,
so a setting that passes here is one the sender accepts.
"""

from __future__ import annotations

from worker import smtp


def check_login(
    host: str,
    port: int,
    tls: str,
    username: str,
    password: str,
    *,
    timeout_seconds: float,
    ca_file: str | None = None,
) -> str:
    """Log in and quit; returns the server's AUTH answer. Raises a worker.errors type."""
    # EHLO with the user's domain, a name the server can accept without asking DNS about us.
    helo = username.rsplit("@", 1)[-1] if "@" in username else "localhost"
    with smtp.connect(
        host, port, tls, helo=helo, timeout_seconds=timeout_seconds, ca_file=ca_file
    ) as conn:
        return smtp.login(conn, username, password)
