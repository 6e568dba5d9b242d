"""Proving SMTP settings without sending anything: connect, TLS, AUTH, QUIT.

Used by `python -m worker stores check`. Same TLS rules and error types as worker.smtp, so a
setting that passes here is one the sender accepts.
"""

from __future__ import annotations

import smtplib

from worker.errors import PermanentError
from worker.imap import client_ssl_context, is_loopback
from worker.smtp import SERVICE, TLS_MODES, classify_smtp_failure


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
    if tls not in TLS_MODES:
        raise PermanentError(f"unknown SMTP TLS mode {tls!r}", service=SERVICE)
    if tls == "plain" and not is_loopback(host):
        raise PermanentError(
            f"SMTP without TLS is only allowed to loopback hosts, not {host!r}", service=SERVICE
        )
    context = client_ssl_context(ca_file)
    # EHLO with the user's domain: smtplib's default asks DNS for our FQDN, which can hang.
    helo = username.rsplit("@", 1)[-1] if "@" in username else "localhost"
    conn: smtplib.SMTP | None = None
    action = "connect"
    try:
        if tls == "ssl":
            conn = smtplib.SMTP_SSL(
                host, port, local_hostname=helo, timeout=timeout_seconds, context=context
            )
        else:
            conn = smtplib.SMTP(host, port, local_hostname=helo, timeout=timeout_seconds)
        conn.ehlo()
        if tls == "starttls":
            action = "starttls"
            if not conn.has_extn("starttls"):
                raise PermanentError("server does not offer STARTTLS", service=SERVICE)
            conn.starttls(context=context)
            conn.ehlo()
        action = "login"
        code, answer = conn.login(username, password)
        return f"{code} {answer.decode('utf-8', 'replace')}".strip()
    except (OSError, smtplib.SMTPException) as exc:
        raise classify_smtp_failure(exc, action) from exc
    finally:
        if conn is not None:
            try:
                conn.quit()
            except (OSError, smtplib.SMTPException):
                conn.close()
