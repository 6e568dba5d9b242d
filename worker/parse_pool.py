"""Parse inbound mail in a few child processes with a hard memory and wall-clock limit.

The pre-scan (worker/mime_limits.py) rejects the obvious bombs for free, but no check written in
Python bounds what the stdlib parser does with a structure nobody thought of. A child process
does: its address space is capped with RLIMIT_AS, and a parse that runs past its time is ended
by killing the child. Whatever a message does, it costs at most `timeout_seconds` and
`memory_bytes`, and it ends as a stub with a reason instead of wedging the mailbox or taking the
worker down. Children are reused (a parse costs a pipe round trip, not a process start) and
replaced after a kill or a MemoryError.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import queue
import resource
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from worker import mime, mime_limits
from worker.errors import TransientError
from worker.mime_limits import ParseLimits

log = logging.getLogger(__name__)

DEFAULT_PROCESSES = 1
DEFAULT_TIMEOUT_SECONDS = 10.0
# A message just under the 25 MiB size limit with one big attachment needs about 250 MiB of
# address space to parse (bench/hostile_parse.py); 320 leaves it room without letting a bomb
# take the 512 MB machine.
DEFAULT_MEMORY_BYTES = 320 * 1024 * 1024
KILL_WAIT_SECONDS = 5.0  # how long a killed child may take to be reaped
START_TIMEOUT_SECONDS = 30.0  # a fork of the fork server; the first start imports the parser
SERVICE = "parse"


@dataclass(frozen=True)
class ParseConfig:
    """How many children, and what each parse may cost."""

    processes: int = DEFAULT_PROCESSES
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    memory_bytes: int = DEFAULT_MEMORY_BYTES
    limits: ParseLimits = field(default_factory=ParseLimits)


@dataclass(frozen=True)
class ParseResult:
    """The ingest row of one message, and how long the parse took (seconds)."""

    row: dict[str, Any]
    seconds: float

    @property
    def skip_reason(self) -> str | None:
        """Why the message was stored as a stub (a limit), or None."""
        reason = self.row.get("skip_reason")
        return str(reason) if reason else None


def stub_row(raw: bytes, *, uid: int, size_bytes: int, reason: str) -> dict[str, Any]:
    """The ingest row of a message stored as a stub because of `reason`."""
    row = mime.limit_stub(raw, uid=uid, size_bytes=size_bytes, reason=reason).to_ingest_json()
    row["detail"] = f"not parsed: {reason}"
    return row


def _child_main(conn: Connection, memory_bytes: int, limits: ParseLimits) -> None:
    # Runs in the child: every allocation past the cap raises MemoryError here, not in the worker.
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    conn.send(("ready", None))
    while True:
        try:
            # Raw bytes, not a pickle: a pickled 25 MB message would exist twice on each side.
            uid = conn.recv()
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            answer: tuple[str, Any] = (
                "ok",
                mime.parse_message(raw, uid=uid, limits=limits).to_ingest_json(),
            )
        except mime.MessageLimitError as exc:
            answer = ("limit", exc.reason)
        except MemoryError:
            answer = ("memory", mime_limits.PARSE_MEMORY)
        del raw
        try:
            conn.send(answer)
        except MemoryError:
            return  # the parent sees the pipe close and records the memory limit
        if answer[0] == "memory":
            return  # a heap that hit the cap once is not trusted for the next message


class _Child:
    def __init__(self, ctx: Any, config: ParseConfig) -> None:
        self.conn, child_conn = ctx.Pipe()
        self.process: BaseProcess = ctx.Process(
            target=_child_main,
            args=(child_conn, config.memory_bytes, config.limits),
            name="mime-parse",
            daemon=True,
        )
        self.process.start()
        child_conn.close()
        try:
            started = self.conn.poll(START_TIMEOUT_SECONDS) and self.conn.recv()[0] == "ready"
        except (EOFError, OSError):
            started = False
        if not started:
            # Not the message's fault: no stub, the fetch fails and the next run tries again.
            self.kill()
            raise TransientError("could not start a mail parsing process", service=SERVICE)

    def kill(self) -> None:
        self.process.kill()
        self.process.join(KILL_WAIT_SECONDS)
        self.conn.close()


class ParsePool:
    """A fixed number of parse children shared by every fetch thread of this process."""

    def __init__(self, config: ParseConfig | None = None) -> None:
        self.config = config or ParseConfig()
        self._ctx = multiprocessing.get_context("forkserver")
        # The fork server imports the parser once; each child is then a cheap fork of it.
        self._ctx.set_forkserver_preload(["worker.mime"])
        self._idle: queue.LifoQueue[_Child | None] = queue.LifoQueue()
        for _ in range(max(1, self.config.processes)):
            self._idle.put(None)  # a slot; the child is started on first use

    def parse(self, raw: bytes, *, uid: int, size_bytes: int | None = None) -> ParseResult:
        """The ingest row of `raw`: parsed, or a stub whose skip_reason names the limit hit."""
        started = time.monotonic()
        size = len(raw) if size_bytes is None else size_bytes
        reason = mime_limits.prescan(raw, self.config.limits)
        if reason is None:
            row, reason = self._parse_in_child(raw, uid)
            if row is not None:
                row["size_bytes"] = size
                return ParseResult(row, time.monotonic() - started)
        assert reason is not None
        log.warning("message uid %s stored as a stub: %s", uid, reason)
        row = stub_row(raw, uid=uid, size_bytes=size, reason=reason)
        return ParseResult(row, time.monotonic() - started)

    def _parse_in_child(self, raw: bytes, uid: int) -> tuple[dict[str, Any] | None, str | None]:
        child = self._idle.get()
        try:
            if child is None or not child.process.is_alive():
                child = _Child(self._ctx, self.config)
            try:
                child.conn.send(uid)
                child.conn.send_bytes(raw)
                ready = child.conn.poll(self.config.timeout_seconds)
                answer = child.conn.recv() if ready else None
            except (EOFError, OSError):
                # The child died mid-parse: the kernel killed it, or the cap left it no room
                # even to report.
                child.kill()
                child = None
                return None, mime_limits.PARSE_MEMORY
            if answer is None:
                child.kill()
                child = None
                return None, mime_limits.PARSE_TIMEOUT
            kind, value = answer
            if kind == "ok":
                return dict(value), None
            if kind == "memory":
                child.kill()
                child = None
            return None, str(value)
        finally:
            self._idle.put(child)

    def close(self) -> None:
        """Stop the idle children (any child also dies with the worker: they are daemons)."""
        children = []
        while True:
            try:
                children.append(self._idle.get_nowait())
            except queue.Empty:
                break
        for child in children:
            if child is not None:
                child.kill()


_shared: dict[ParseConfig, ParsePool] = {}
_shared_lock = threading.Lock()


def shared_pool(config: ParseConfig | None = None) -> ParsePool:
    """The process-wide pool for `config`, started on first use and stopped at exit."""
    config = config or ParseConfig()
    with _shared_lock:
        pool = _shared.get(config)
        if pool is None:
            pool = _shared[config] = ParsePool(config)
            atexit.register(pool.close)
        return pool
