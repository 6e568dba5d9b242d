"""The structural bounds on inbound mail: pre-scan, parse checks and the unstorable-value rule."""

from __future__ import annotations

import pytest

from tests.corpus import hostile
from worker import mime, mime_limits, pg_text
from worker.mime_limits import ParseLimits

LIMITS = ParseLimits()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (hostile.parts_bomb(), mime_limits.TOO_MANY_PARTS),
        (hostile.huge_headers(), mime_limits.HEADERS_TOO_LARGE),
        (
            hostile.huge_headers(fields=2_000, tag="many").replace(b"y" * 40, b"y"),
            mime_limits.TOO_MANY_HEADERS,
        ),
    ],
    ids=["parts_bomb", "huge_headers", "many_headers"],
)
def test_prescan_rejects_bombs_without_parsing(raw: bytes, reason: str) -> None:
    assert mime_limits.prescan(raw, LIMITS) == reason
    with pytest.raises(mime.MessageLimitError) as caught:
        mime.parse_message(raw, limits=LIMITS)
    assert caught.value.reason == reason


def test_prescan_passes_ordinary_mail() -> None:
    for raw in (hostile.good(1), hostile.nul_content_type(), hostile.invalid_charset()):
        assert mime_limits.prescan(raw, LIMITS) is None


def test_structure_the_prescan_misses_is_caught_on_the_parsed_tree() -> None:
    # Nesting is invisible to a byte count; an RFC 2231 split boundary hides the part lines.
    with pytest.raises(mime.MessageLimitError) as deep:
        mime.parse_message(hostile.deep_nesting(depth=LIMITS.max_depth + 5), limits=LIMITS)
    assert deep.value.reason == mime_limits.TOO_DEEP
    split = hostile.split_boundary_bomb(parts=LIMITS.max_parts * 2)
    assert mime_limits.prescan(split, LIMITS) is None
    with pytest.raises(mime.MessageLimitError) as parts:
        mime.parse_message(split, limits=LIMITS)
    assert parts.value.reason == mime_limits.TOO_MANY_PARTS


def test_decoded_size_is_bounded_without_decoding() -> None:
    small = ParseLimits(max_decoded_bytes=1_000)
    raw = hostile.good(1).replace(b"Oi!", b"x" * 2_000 + b" Oi!")
    with pytest.raises(mime.MessageLimitError) as caught:
        mime.parse_message(raw, limits=small)
    assert caught.value.reason == mime_limits.DECODED_TOO_LARGE


def test_nesting_within_the_limits_still_parses() -> None:
    email = mime.parse_message(hostile.deep_nesting(depth=5), limits=LIMITS)
    assert email.body_text == "Where is my order?"


def test_limit_stub_keeps_the_header_and_names_the_reason() -> None:
    stub = mime.limit_stub(hostile.parts_bomb(parts=10), uid=4, size_bytes=99, reason="x")
    assert (stub.message_id, stub.subject, stub.skip_reason) == (
        "<bomb@example.com>",
        "Order question",
        "x",
    )
    assert (stub.body_text, stub.size_bytes, stub.uid) == ("", 99, 4)


def test_attachment_size_is_counted_without_decoding() -> None:
    email = mime.parse_message(hostile.nul_content_type())
    assert [a.size for a in email.attachments] == [2]


def test_pg_text_removes_what_postgres_rejects_everywhere() -> None:
    value = {"a\x00": ["x\x00y", ("\ud800z",)], "n": 1, "none": None, "ok": "café"}
    assert pg_text.clean_value(value) == {"a": ["xy", ["z"]], "n": 1, "none": None, "ok": "café"}
    assert pg_text.clean_text("plain") == "plain"
