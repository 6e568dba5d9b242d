"""Posting a store's notification digest to its webhook (a Slack incoming webhook or any
receiver of JSON): one POST with timeouts, typed errors, no redirects.

The URL is a credential (whoever has a Slack webhook URL may post to the channel), so it never
appears in an error, a log line or an event: errors name the host at most.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from worker import errors

SERVICE = "webhook"
MAX_DETAIL_CHARS = 200  # of a refusing receiver's answer, kept in the error


def breaker_service(store_id: str) -> str:
    """The circuit-breaker name of a store's webhook (not a store service: it never notifies)."""
    return f"webhook:{store_id}"


def check_host(url: str, *, allow_private: bool) -> str:
    """The URL's host, refusing (permanently) one that resolves to a private, loopback or
    link-local address: a store's people choose the URL, and the worker must not become their
    way into its own network. `allow_private` is for tests and the demo."""
    split = urlsplit(url)
    host = split.hostname
    if split.scheme not in ("http", "https") or not host:
        raise errors.PermanentError("the webhook URL is not an http(s) URL", service=SERVICE)
    if allow_private:
        return host
    try:
        infos = socket.getaddrinfo(host, split.port or 443, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise errors.TransientError(f"cannot resolve {host}: {exc}", service=SERVICE) from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise errors.PermanentError(
                f"the webhook host {host} is not a public address", service=SERVICE
            )
    return host


def post(
    http: httpx.Client | None,
    url: str,
    body: Mapping[str, Any],
    *,
    timeout_seconds: float,
    allow_private: bool = False,
) -> int:
    """POST body as JSON; returns the HTTP status (2xx). Raises TransientError (timeouts,
    connection failures, 408/429/5xx) or PermanentError (other 4xx, a redirect, a private host)."""
    host = check_host(url, allow_private=allow_private)
    timeout = httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 5.0))
    try:
        if http is None:
            with httpx.Client(timeout=timeout) as client:
                response = _send(client, url, body, timeout)
        else:
            response = _send(http, url, body, timeout)
    except httpx.TimeoutException as exc:
        raise errors.TransientError(f"{host}: timed out", service=SERVICE) from exc
    except httpx.TransportError as exc:
        # The exception's text may carry the URL; only its type is kept.
        raise errors.TransientError(
            f"{host}: connection failed ({type(exc).__name__})", service=SERVICE
        ) from exc
    if 300 <= response.status_code < 400:
        raise errors.PermanentError(
            f"{host}: HTTP {response.status_code}: the webhook redirects; give its final URL",
            service=SERVICE,
            http_status=response.status_code,
        )
    if response.status_code >= 400:
        detail = " ".join(response.text.split())[:MAX_DETAIL_CHARS]
        error = errors.classify_http_status(
            response.status_code, response.headers.get("Retry-After"), SERVICE, detail=detail
        )
        error.message = f"{host}: {error.message}"
        error.args = (error.message,)
        raise error
    return response.status_code


def _send(
    http: httpx.Client, url: str, body: Mapping[str, Any], timeout: httpx.Timeout
) -> httpx.Response:
    return http.post(
        url,
        json=dict(body),
        headers={"Content-Type": "application/json"},
        timeout=timeout,
        follow_redirects=False,
    )
