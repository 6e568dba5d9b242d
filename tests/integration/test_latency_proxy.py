"""worker/devstack/latency_proxy: bytes pass unchanged and in order, each way late by its delay."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from worker.devstack.latency_proxy import LatencyProxy

pytestmark = pytest.mark.integration

DELAY = 0.1  # seconds each way


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[0], server.server_address[1]
    server.shutdown()
    server.server_close()


def _read(sock: socket.socket, size: int) -> bytes:
    got = b""
    while len(got) < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_bytes_come_back_unchanged_in_order_one_round_trip_late(echo: tuple[str, int]) -> None:
    payload = bytes(range(256)) * 2000  # 512 KB: several reads, kept in order
    with LatencyProxy(*echo, delay_seconds=DELAY) as proxy:
        with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(b"ping")
            assert _read(sock, 4) == b"ping"
            # a round trip crosses the proxy twice; the lower bound is the delay, not speed
            assert time.monotonic() - started >= 2 * DELAY
            sock.sendall(payload)
            assert _read(sock, len(payload)) == payload
        assert proxy.connections == 1


def test_closing_one_side_closes_the_other(echo: tuple[str, int]) -> None:
    with LatencyProxy(*echo, delay_seconds=0.01) as proxy:
        with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
            sock.sendall(b"bye")
            assert _read(sock, 3) == b"bye"
            sock.shutdown(socket.SHUT_WR)
            # the echo server sees end of file, closes, and the proxy passes that back
            assert sock.recv(10) == b""
