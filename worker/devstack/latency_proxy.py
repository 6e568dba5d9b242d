"""A TCP proxy on a loopback port that delays every byte by a fixed time in each direction.

A store's mail server is tens of milliseconds away, and an IMAP fetch is a handful of round trips
(TLS handshake, LOGIN, SELECT, SEARCH, FETCH, LOGOUT); loopback Dovecot answers in microseconds.
Benchmarks put this proxy in front of Dovecot so a mailbox costs what it costs in production in
wall time, without touching the machine's network settings (which other tests share). Bytes are
forwarded unchanged (TLS passes through), in order, each direction `delay_seconds` late, so a
round trip costs 2 x delay_seconds.

Run standalone: `python -m worker.devstack.latency_proxy --target 127.0.0.1:993 --delay 0.025`
(prints `READY <host>:<port>` once it listens, stops on SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
import time
from typing import Self

CHUNK_BYTES = 65_536
LISTEN_BACKLOG = 4096  # a sweep opens hundreds of connections at once


class LatencyProxy:
    """Forwards host:port to target_host:target_port, `delay_seconds` late each way."""

    def __init__(
        self, target_host: str, target_port: int, *, delay_seconds: float, host: str = "127.0.0.1"
    ) -> None:
        self.target_host, self.target_port = target_host, target_port
        self.delay_seconds = delay_seconds
        self.host = host
        self.port = 0
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def start(self) -> Self:
        """Listen on a free port in a background thread; returns once it accepts."""
        self._thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("latency proxy did not start")
        return self

    def stop(self) -> None:
        """Stop accepting and close every connection."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._handle, self.host, 0, backlog=LISTEN_BACKLOG)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopping.wait()
        server.close()
        # every connection's tasks end here, so no transport outlives the loop
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_w.close()
            return
        try:
            await asyncio.gather(
                self._pipe(client_r, server_w),
                self._pipe(server_r, client_w),
                return_exceptions=True,
            )
        finally:
            for writer in (client_w, server_w):
                writer.close()
                try:
                    await writer.wait_closed()
                except (OSError, asyncio.CancelledError):
                    pass

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Reading goes on while earlier bytes wait out their delay: the delay is latency, not a
        # limit on throughput.
        due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            while True:
                data = await reader.read(CHUNK_BYTES)
                await due.put((time.monotonic() + self.delay_seconds, data))
                if not data:
                    return

        async def write() -> None:
            try:
                while True:
                    at, data = await due.get()
                    wait = at - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    if not data:
                        if writer.can_write_eof():
                            writer.write_eof()
                        return
                    writer.write(data)
                    await writer.drain()
            finally:
                writer.close()

        reading = asyncio.ensure_future(read())
        try:
            await write()
        finally:
            reading.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", required=True, help="host:port to forward to")
    parser.add_argument("--delay", type=float, required=True, help="seconds each way")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    proxy = LatencyProxy(host, int(port), delay_seconds=args.delay).start()
    print(f"READY {proxy.host}:{proxy.port}", flush=True)
    stop.wait()
    proxy.stop()
    print(f"CONNECTIONS {proxy.connections}", flush=True)


if __name__ == "__main__":
    main()
