"""Pytest plugin: the test database behind a real pgbouncer in transaction mode."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from worker.devstack.pgbouncer import PgBouncer


@pytest.fixture(scope="session")
def pgbouncer_url(database_url: str) -> Iterator[str]:
    """The test database behind pgbouncer in transaction mode (Supabase's port 6543 stand-in)."""
    with PgBouncer(database_url) as bouncer:
        yield bouncer.url
