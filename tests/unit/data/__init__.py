"""Real-world .eml samples shared by the test suites; see README.md for what each one is."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).parent


def load_eml(name: str, *, crlf: bool = False) -> bytes:
    """The raw bytes of a sample; crlf=True gives the line endings IMAP servers send."""
    raw = (DATA_DIR / name).read_bytes()
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") if crlf else raw


def sample_names() -> list[str]:
    """Every sample file name, sorted."""
    return sorted(p.name for p in DATA_DIR.glob("*.eml"))
