"""Structural limits on inbound mail, and a cheap pre-scan of the raw bytes against them; pure.

The stdlib parser's cost grows with the number of MIME parts, not with the message size: a 1 MB
message of 100,000 empty parts takes about 9 s to parse here, a 25 MB one minutes and a gigabyte.
The pre-scan counts, in one pass over the bytes, upper bounds of what the parser would build
(header fields, declared boundaries, boundary lines, Content-Type fields) and rejects a message
before any parsing. It is a fast path, not the guarantee: the parse itself runs in a child
process with a memory and wall-clock limit (worker/parse_pool.py), which no structure escapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# skip_reason values of messages stored as stubs (never answered; docs/design.md).
TOO_MANY_PARTS: Final = "too_many_parts"
TOO_DEEP: Final = "too_deep"
TOO_MANY_HEADERS: Final = "too_many_headers"
HEADERS_TOO_LARGE: Final = "headers_too_large"
DECODED_TOO_LARGE: Final = "decoded_too_large"
PARSE_TIMEOUT: Final = "parse_timeout"
PARSE_MEMORY: Final = "parse_memory"
UNSTORABLE: Final = "unstorable"  # the database refused the parsed message (e.g. a bad value)

# How much of a rejected message's header block is parsed to build its stub: enough for every
# real header block, small enough that parsing it is cheap whatever it contains.
STUB_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class ParseLimits:
    """Per-message bounds; a message beyond any of them is stored as a stub, never parsed."""

    max_parts: int = 500  # MIME parts, containers included
    max_depth: int = 20  # nesting of multiparts and attached messages
    max_headers: int = 1_000  # header fields of the top-level header block
    max_header_bytes: int = 256 * 1024  # size of the top-level header block
    max_decoded_bytes: int = 64 * 1024 * 1024  # sum of decoded part bodies


_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FIELD_START = re.compile(rb"^[^ \t\r\n]", re.MULTILINE)
# A boundary parameter, quoted or not (RFC 2046: at most 70 characters, but be lenient).
_BOUNDARY_PARAM = re.compile(
    rb"""boundary(?:\*0)?\*?\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))""", re.I
)
_CONTENT_TYPE = re.compile(rb"^content-type[ \t]*:", re.IGNORECASE | re.MULTILINE)


def header_block(raw: bytes) -> bytes:
    """The top-level header block (everything before the first blank line)."""
    match = _HEADER_END.search(raw)
    return raw[: match.start()] if match else raw


def prescan(raw: bytes, limits: ParseLimits) -> str | None:
    """Why the raw message exceeds `limits` (a skip_reason) or None; linear in its size.

    Every count is an upper bound of what the parser would build, so a message that passes can
    still be stopped by the parse's own checks, but one that fails would certainly exceed a limit
    or come close enough to cost what the limit is there to prevent.
    """
    head = header_block(raw)
    if len(head) > limits.max_header_bytes:
        return HEADERS_TOO_LARGE
    if len(_FIELD_START.findall(head)) > limits.max_headers:
        return TOO_MANY_HEADERS
    # Every container (multipart or attached message) declares its type; so does every part that
    # is not plain text. A part without a Content-Type still needs a boundary line to exist.
    if len(_CONTENT_TYPE.findall(raw)) > limits.max_parts:
        return TOO_MANY_PARTS
    boundaries = {q or u for q, u in _BOUNDARY_PARAM.findall(raw)}
    if len(boundaries) > limits.max_parts:
        return TOO_MANY_PARTS
    if boundaries:
        # Only lines that are one of the declared boundaries match, so the loop below runs at
        # most the limit's number of times; the scan itself is the regex engine's.
        names = b"|".join(re.escape(b) for b in sorted(boundaries, key=len, reverse=True))
        line = re.compile(rb"^--(?:" + names + rb")(?:--)?[ \t]*\r?$", re.MULTILINE)
        allowed = limits.max_parts + len(boundaries)  # one closing line per container
        for count, _ in enumerate(line.finditer(raw), start=1):
            if count > allowed:
                return TOO_MANY_PARTS
    return None
