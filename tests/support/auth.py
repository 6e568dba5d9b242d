"""Pytest plugin: the local Supabase Auth stand-in (worker/devstack/auth.py) on loopback.

`auth_server` (session) serves GoTrue's endpoints over the test database with the Supabase
CLI's well-known local JWT secret, the same one the PostgREST-compatible gateway verifies.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from worker.devstack.auth import AuthServer, anon_key, service_role_key
from worker.devstack.gateway import TEST_JWT_SECRET

__all__ = ["TEST_JWT_SECRET", "anon_key", "auth_server", "service_role_key"]


@pytest.fixture(scope="session")
def auth_server(database_url: str) -> Iterator[AuthServer]:
    """A running Auth stand-in storing people in the test database's auth.users."""
    with AuthServer(database_url, TEST_JWT_SECRET) as server:
        yield server
