"""TLS for the mail edges: the rules on a store's TLS mode and the one verifying client context.

IMAP, SMTP and the SMTP settings check all go through here, so a setting accepted by one is
accepted by the others and certificates are verified the same way everywhere.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import ssl
from typing import Literal

from worker.errors import ConfigError, PermanentError

TlsMode = Literal["ssl", "starttls", "plain"]
TLS_MODES: tuple[str, ...] = ("ssl", "starttls", "plain")


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback IP literals, the only hosts allowed without TLS."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_tls_mode(tls: str, host: str, service: str) -> None:
    """Raise PermanentError for an unknown TLS mode, or for 'plain' to a non-loopback host."""
    protocol = service.upper()
    if tls not in TLS_MODES:
        raise PermanentError(f"unknown {protocol} TLS mode {tls!r}", service=service)
    if tls == "plain" and not is_loopback(host):
        raise PermanentError(
            f"{protocol} without TLS is only allowed to loopback hosts, not {host!r}",
            service=service,
        )


def client_ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A verifying TLS context: the system's CAs plus the optional extra bundle.

    Built once and shared: loading the system CA store costs milliseconds of CPU, paid on every
    IMAP login and SMTP send otherwise, and an SSLContext is safe to share between threads. A
    rewritten CA file (new mtime) gets a fresh context.
    """
    if not ca_file:
        return _cached_context(None, None)
    try:
        stamp = os.stat(ca_file).st_mtime_ns
    except OSError as exc:
        raise ConfigError(f"EXTRA_CA_FILE {ca_file!r} cannot be loaded: {exc}") from exc
    return _cached_context(ca_file, stamp)


@functools.lru_cache(maxsize=8)
def _cached_context(ca_file: str | None, stamp: int | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            # The deployment's fault, not the mailbox's: no retry or breaker can fix it.
            raise ConfigError(f"EXTRA_CA_FILE {ca_file!r} cannot be loaded: {exc}") from exc
    return context
