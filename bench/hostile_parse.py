"""What the worst inbound message costs the worker: parse time and peak memory (issue 13).

Parses the hostile corpus at the size limit (MAX_MESSAGE_BYTES, 25 MiB by default) through the
worker's own parse pool (worker/parse_pool.py, the settings' defaults) while a sampler thread
reads the resident memory (RSS, /proc) of this process and of every process below it (the fork
server and the parse children) every 5 ms. The parent holds the raw message the whole time, as
fetch does after the IMAP download. Also measures the pool's overhead on an ordinary message.

    .venv/bin/python -m bench.hostile_parse [--size-mb 25] [--timeout 10] [--memory-mb 320]
                                            [--imap] [--json F]

With --imap each message is also fetched the way fetch does it (a local Dovecot, IMAP over TLS,
BODY.PEEK[], then the parse pool), and that peak is reported under `fetch_<case>`.

Run as a module, not as a file: the parse children (forkserver) import the main module again.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.corpus import hostile
from worker import mime, parse_pool

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024
SAMPLE_SECONDS = 0.005


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _is_python(pid: int) -> bool:
    # The fork server and the parse children are Python; a local Dovecot (--imap) is not ours.
    try:
        return Path(f"/proc/{pid}/comm").read_text().startswith("python")
    except OSError:
        return False


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


class Sampler:
    """Peak RSS of this process, of its largest descendant and of the whole tree."""

    def __init__(self) -> None:
        self.parent = self.child = self.tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            parent = _rss(me)
            kids = [_rss(pid) for pid in _descendants(me) if _is_python(pid)]
            self.parent = max(self.parent, parent)
            self.child = max([self.child, *kids])
            self.tree = max(self.tree, parent + sum(kids))
            time.sleep(SAMPLE_SECONDS)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def big_attachment(size: int) -> bytes:
    """The largest ordinary message: one attachment filling the size limit."""
    # base64 lines are 78 bytes (CRLF, as IMAP serves them) for 57 of data: sized so the whole
    # message stays under `size`.
    data = base64.encodebytes(os.urandom(size * 57 // 78 - 4096)).replace(b"\n", b"\r\n")
    return (
        hostile.good(1).split(b"\r\n\r\n")[0]
        + b"\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain"
        b"\r\n\r\nSegue a nota.\r\n--b\r\nContent-Type: application/pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + data + b"--b--\r\n"
    )


def cases(limit: int) -> dict[str, Callable[[], bytes]]:
    """Each case just under `limit` (MAX_MESSAGE_BYTES): above it fetch reads only the header."""
    size = limit - 256 * 1024
    part = len(b"--b\r\n\r\nx\r\n")
    return {
        "parts_bomb": lambda: hostile.parts_bomb(parts=size // part),
        "split_boundary_bomb": lambda: hostile.split_boundary_bomb(parts=size // (part + 1)),
        "deep_nesting": lambda: hostile.deep_nesting(depth=5_000),
        "huge_headers": lambda: hostile.huge_headers(fields=size // 60),
        "largest_ordinary": lambda: big_attachment(size),
    }


def measure_fetch(
    size: int, config: parse_pool.ParseConfig, pool: parse_pool.ParsePool
) -> dict[str, Any]:
    """Each case delivered to a local Dovecot, then fetched and parsed as worker.fetch does."""
    from worker import fetch, imap
    from worker.devstack.dovecot import running_dovecot

    results: dict[str, Any] = {}
    parse = fetch.pool_parser(pool)
    with running_dovecot() as dovecot:
        for n, (name, build) in enumerate(cases(size).items()):
            user, password = f"bench{n}@shop.test", "bench-password"
            dovecot.add_user(user, password)
            raw = build()
            dovecot.deliver(user, [raw])
            del raw
            with Sampler() as sampler:
                started = time.perf_counter()
                with imap.open_mailbox(
                    dovecot.host,
                    dovecot.imaps_port,
                    "ssl",
                    user,
                    password,
                    timeout_seconds=60,
                    ca_file=str(dovecot.ca.ca_file),
                ) as client:
                    batch = imap.fetch_new_messages(client, "INBOX", 0, None, 10, size)
                (item,) = batch.messages
                row = fetch.to_ingest_row(item, size, parse)
                took = time.perf_counter() - started
            results[f"fetch_{name}"] = {
                "bytes": item.size,
                "outcome": row.get("skip_reason") or "parsed",
                "seconds": round(took, 2),
                "peak_rss_mb": {
                    "worker": round(sampler.parent / MB),
                    "largest_child": round(sampler.child / MB),
                    "all_processes": round(sampler.tree / MB),
                },
            }
            del batch, item, row
    return results


def measure(size: int, config: parse_pool.ParseConfig, with_imap: bool = False) -> dict[str, Any]:
    pool = parse_pool.ParsePool(config)
    results: dict[str, Any] = {
        "config": {
            "processes": config.processes,
            "timeout_seconds": config.timeout_seconds,
            "memory_mb": config.memory_bytes // MB,
        }
    }
    small = hostile.good(1)
    pool.parse(small, uid=1)  # start the child
    rounds = 500
    started = time.perf_counter()
    for _ in range(rounds):
        pool.parse(small, uid=1)
    pooled = (time.perf_counter() - started) / rounds
    started = time.perf_counter()
    for _ in range(rounds):
        mime.parse_message(small, uid=1)
    inline = (time.perf_counter() - started) / rounds
    results["ordinary_ms"] = {"pool": round(pooled * 1e3, 3), "in_process": round(inline * 1e3, 3)}
    for name, build in cases(size).items():
        raw = build()
        with Sampler() as sampler:
            started = time.perf_counter()
            outcome = pool.parse(raw, uid=2)
            took = time.perf_counter() - started
        results[name] = {
            "bytes": len(raw),
            "outcome": outcome.skip_reason or "parsed",
            "seconds": round(took, 2),
            "peak_rss_mb": {
                "worker": round(sampler.parent / MB),
                "largest_child": round(sampler.child / MB),
                "all_processes": round(sampler.tree / MB),
            },
        }
        del raw
    if with_imap:
        results.update(measure_fetch(size, config, pool))
    pool.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=float, default=25.0, help="MAX_MESSAGE_BYTES, in MiB")
    parser.add_argument("--timeout", type=float, default=parse_pool.DEFAULT_TIMEOUT_SECONDS)
    parser.add_argument("--memory-mb", type=int, default=parse_pool.DEFAULT_MEMORY_BYTES // MB)
    parser.add_argument("--imap", action="store_true", help="also fetch each through Dovecot")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    config = parse_pool.ParseConfig(timeout_seconds=args.timeout, memory_bytes=args.memory_mb * MB)
    results = measure(int(args.size_mb * MB), config, args.imap)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
