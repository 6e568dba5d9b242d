"""Pytest plugin: `gateway`, the PostgREST-compatible RPC gateway (worker/devstack/gateway.py)
over the test database, so the supabase-py backend is tested against the real database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from worker.devstack.gateway import RpcGateway, authenticator_url


@dataclass(frozen=True)
class GatewayHandle:
    """What the `gateway` fixture yields: unpacks as (base_url, service_role_jwt, make_jwt)."""

    base_url: str
    service_role_jwt: str
    make_jwt: Callable[..., str]

    def __iter__(self) -> Iterator[Any]:
        return iter((self.base_url, self.service_role_jwt, self.make_jwt))


@pytest.fixture(scope="session")
def gateway(database_url: str) -> Iterator[GatewayHandle]:
    """A PostgREST-compatible gateway over the test database, connected as `authenticator`."""
    server = RpcGateway(authenticator_url(database_url))
    try:
        yield GatewayHandle(server.url, server.make_jwt("service_role"), server.make_jwt)
    finally:
        server.close()
