"""Calls to outside services behind their circuit breakers, with a short in-process cache.

The breaker state lives in SQL (circuit_allow / circuit_record); this module only avoids asking
the database on every call while a breaker is known closed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from worker.errors import CircuitOpenError, PermanentError, TransientError, WorkerError

log = logging.getLogger(__name__)

# How long a breaker this process saw closed is trusted without asking the database. Our own
# failures drop the entry at once; another container's failures or a breaker it opened are seen
# at most this late. Without it, every email paid 6 of its ~15 database round trips here.
BREAKER_TTL_SECONDS = 1.0


class BreakerStore(Protocol):
    """The two breaker calls of worker.db.Database."""

    def circuit_allow(self, service: str) -> bool: ...
    def circuit_record(self, service: str, success: bool) -> str: ...
    def circuit_wait_seconds(self, service: str) -> int: ...


class Breakers:
    """The database's breakers, with closed ones trusted for BREAKER_TTL_SECONDS."""

    def __init__(self, db: BreakerStore) -> None:
        self.db = db
        self._closed_at: dict[str, float] = {}  # service -> when seen closed

    def _recently_closed(self, service: str) -> bool:
        seen = self._closed_at.get(service)
        return seen is not None and time.monotonic() - seen < BREAKER_TTL_SECONDS

    def allow(self, service: str) -> bool:
        """Whether the service's breaker lets a call through (closed: answered from memory)."""
        if self._recently_closed(service):
            return True
        return self.db.circuit_allow(service)

    def open_error(self, service: str) -> CircuitOpenError:
        """The error that defers a job until the open breaker lets calls through again."""
        try:
            wait: float | None = self.db.circuit_wait_seconds(service)
        except WorkerError:
            # The deferral then falls back to the runner's default wait.
            log.warning("could not read how long %s's breaker stays open", service)
            wait = None
        return CircuitOpenError(service, retry_after=wait)

    def record(self, service: str, success: bool) -> None:
        """Count a call's outcome; a success on a breaker we just saw clean costs nothing."""
        if success and self._recently_closed(service):
            # The database would only read the row and answer 'closed' (no failure since).
            return
        self._closed_at.pop(service, None)
        state = self.db.circuit_record(service, success)
        if success and state == "closed":
            self._closed_at[service] = time.monotonic()


def guarded(breakers: Breakers, service: str, call: Callable[[], Any]) -> Any:
    """Run one call to an outside service behind its circuit breaker."""
    if not breakers.allow(service):
        raise breakers.open_error(service)
    try:
        result = call()
    except TransientError:
        breakers.record(service, False)
        raise
    except PermanentError as exc:
        # A bad request is this job's problem, not an outage; refused credentials repeat on
        # every call, so only they count against the breaker.
        breakers.record(service, not exc.is_auth_failure)
        raise
    breakers.record(service, True)
    return result
