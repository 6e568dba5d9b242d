"""The parse pool's hard limits: wall-clock and memory per message, in a child process."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator

import pytest

from tests.corpus import hostile
from worker import mime_limits, parse_pool

MB = 1024 * 1024


@pytest.fixture
def pool() -> Iterator[parse_pool.ParsePool]:
    started = parse_pool.ParsePool(
        parse_pool.ParseConfig(processes=1, timeout_seconds=1.0, memory_bytes=160 * MB)
    )
    yield started
    started.close()


def test_ordinary_mail_is_parsed_in_the_child(pool: parse_pool.ParsePool) -> None:
    result = pool.parse(hostile.good(1), uid=3)
    assert result.skip_reason is None
    assert (result.row["message_id"], result.row["uid"]) == ("<good-1@example.com>", 3)
    assert result.row["body_text"] == "Oi! Onde esta meu pedido #1001?"


def test_a_parse_past_the_time_limit_is_killed_and_stored_as_a_stub(
    pool: parse_pool.ParsePool,
) -> None:
    raw = hostile.split_boundary_bomb()  # escapes the pre-scan; unbounded it parses for ~20 s
    started = time.monotonic()
    result = pool.parse(raw, uid=5)
    assert time.monotonic() - started < 3.0
    assert result.skip_reason == mime_limits.PARSE_TIMEOUT
    assert (result.row["message_id"], result.row["size_bytes"]) == (
        "<split-bomb@example.com>",
        len(raw),
    )
    # The killed child is replaced: the next message parses normally.
    assert pool.parse(hostile.good(2), uid=6).skip_reason is None


def test_a_parse_past_the_memory_limit_is_stopped_and_stored_as_a_stub() -> None:
    small = parse_pool.ParsePool(
        parse_pool.ParseConfig(processes=1, timeout_seconds=30.0, memory_bytes=100 * MB)
    )
    try:
        attachment = base64.encodebytes(os.urandom(12 * MB))
        raw = hostile.good(3).replace(b"MIME-Version: 1.0\r\n", b"") + b"\r\n"
        raw = (
            raw.split(b"\r\n\r\n")[0]
            + b"\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\n"
            b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + attachment
            + b"--b--\r\n"
        )
        result = small.parse(raw, uid=7)
        assert result.skip_reason == mime_limits.PARSE_MEMORY
        assert result.row["message_id"] == "<good-3@example.com>"
        assert small.parse(hostile.good(4), uid=8).skip_reason is None
    finally:
        small.close()


def test_prescan_rejects_the_bomb_before_any_child_work(pool: parse_pool.ParsePool) -> None:
    started = time.monotonic()
    result = pool.parse(hostile.parts_bomb(), uid=9)
    assert result.skip_reason == mime_limits.TOO_MANY_PARTS
    assert time.monotonic() - started < 1.0
