"""gunicorn's thread worker, holding a thread only once a request's head has fully arrived.

gthread hands a connection to a thread as soon as its first bytes arrive, and the thread then
blocks until the request head is complete: eight clients sending one header line every 20 s held
all eight threads, and /healthz and the triggers went unanswered for minutes (issue 13 item 6).
gunicorn has no request-header timeout. Here a thread only reads what has arrived (without
blocking), keeps it with the connection and hands the connection back to the poller until the
blank line that ends the head is in; then the request is parsed from those bytes as usual. A
head that is not complete within REQUEST_HEAD_SECONDS, or grows past MAX_HEAD_BYTES, is dropped.
The run guard stays per process: this is still one gthread worker.
"""

from __future__ import annotations

import time
from typing import Any

from gunicorn.workers import gthread

REQUEST_HEAD_SECONDS = 10.0  # from a request's first byte to the end of its head
MAX_HEAD_BYTES = 64 * 1024  # gunicorn's own limits (100 fields of 8190 bytes) fit well below
READ_CHUNK = 16 * 1024

# gthread's "back to the poller" answer from handle(); private, so the slow-client test in
# tests/integration/test_gunicorn.py is what tells us if a gunicorn release changes it.
_DEFER: Any = gthread._DEFER


def head_complete(data: bytes) -> bool:
    """Whether `data` holds a whole HTTP/1 request head (it ends with an empty line)."""
    return b"\r\n\r\n" in data or b"\n\n" in data


class ThreadWorker(gthread.ThreadWorker):
    """gthread with the request head gathered before a thread is committed to it."""

    def handle(self, conn: Any) -> Any:
        """Serve a request whose head has arrived; otherwise keep what came and wait for more."""
        parser = conn.parser
        if parser is not None and parser.unreader.buf.getvalue():
            return super().handle(conn)  # bytes read ahead by the last request: a head is there
        if not conn.initialized:
            conn.init()  # creates the parser; for plain HTTP it reads nothing
        state = conn.__dict__.setdefault("head", {"data": b"", "since": time.monotonic()})
        closed = False
        conn.sock.setblocking(False)
        try:
            while len(state["data"]) <= MAX_HEAD_BYTES:
                chunk = conn.sock.recv(READ_CHUNK)
                if not chunk:
                    closed = True
                    break
                state["data"] += chunk
        except (BlockingIOError, InterruptedError):
            pass  # everything that has arrived is read
        except OSError:
            closed = True
        if closed or len(state["data"]) > MAX_HEAD_BYTES:
            return False  # gone, or a head no real client sends: close
        if not head_complete(state["data"]):
            if time.monotonic() - state["since"] > REQUEST_HEAD_SECONDS:
                return False
            conn.data_ready = False
            return _DEFER
        del conn.__dict__["head"]  # the next request on this connection starts its own clock
        conn.parser.unreader.unread(state["data"])
        conn.data_ready = True
        return super().handle(conn)
