"""A real pgbouncer (Debian's package) in transaction mode in front of the test database.

Supabase's transaction pooler (Supavisor, port 6543) shares server connections between clients
per transaction, like pgbouncer's pool_mode = transaction; the psycopg backend must work through
it. A small server pool makes clients share server connections, which is what breaks prepared
statements. The tests start it (tests/support/pgbouncer.py) on a free loopback address and stop
it with the session.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

PGBOUNCER = "/usr/sbin/pgbouncer"
SERVER_POOL_SIZE = 2  # server connections per database/user pair
START_TIMEOUT = 10.0  # seconds
# Supabase's transaction pooler port, so the worker's DATABASE_PREPARED_STATEMENTS=auto sees the
# URL exactly as on Supabase. Several test runs share the machine: each takes port 6543 on its
# own loopback address (all of 127.0.0.0/8 reaches the loopback interface).
POOLER_PORT = 6543


def free_loopback_address(port: int = POOLER_PORT) -> str:
    """A 127.x.y.z address whose `port` is free right now."""
    for _ in range(50):
        host = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return host
    raise RuntimeError(f"no loopback address with port {port} free")


class PgBouncer:
    """pgbouncer in transaction mode on 127.x.y.z:6543 for `database_url`'s server and user."""

    def __init__(self, database_url: str, *, pool_size: int = SERVER_POOL_SIZE) -> None:
        self.target = urlsplit(database_url)
        self.pool_size = pool_size
        self.host = free_loopback_address()
        self.port = POOLER_PORT
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The test database's URL with pgbouncer's port instead of Postgres's."""
        user = self.target.username or "postgres"
        password = self.target.password or ""
        netloc = f"{user}:{password}@{self.host}:{self.port}"
        return urlunsplit(self.target._replace(netloc=netloc))

    def __enter__(self) -> PgBouncer:
        if not os.path.exists(PGBOUNCER):
            raise RuntimeError(f"{PGBOUNCER} is missing: scripts/test installs pgbouncer")
        # pgbouncer refuses to run as root; started as root it drops to the postgres user, which
        # must read the config, so it lives in a world-readable directory of its own.
        self._dir = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        self._dir.chmod(0o755)
        user = self.target.username or "postgres"
        (self._dir / "users.txt").write_text(f'"{user}" "{self.target.password or ""}"\n')
        (self._dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={self.target.hostname or '127.0.0.1'} port={self.target.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = {self.host}\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = scram-sha-256\n"
            f"auth_file = {self._dir / 'users.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 200\n"
            f"logfile = {self._dir / 'pgbouncer.log'}\n"
        )
        for path in self._dir.iterdir():
            path.chmod(0o644)
        if os.geteuid() == 0:
            shutil.chown(self._dir, "postgres")
        command = [PGBOUNCER, str(self._dir / "pgbouncer.ini")]
        if os.geteuid() == 0:
            command[1:1] = ["-u", "postgres"]
        self._proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_listening()
        return self

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {self.log()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen on {self.port}: {self.log()}")

    def log(self) -> str:
        """pgbouncer's log so far (for failure messages)."""
        if self._dir is None or not (self._dir / "pgbouncer.log").exists():
            return ""
        return (self._dir / "pgbouncer.log").read_text(errors="replace")[-4000:]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
