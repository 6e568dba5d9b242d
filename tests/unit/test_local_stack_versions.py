"""supabase/config.toml tells the Supabase CLI which Postgres the project runs; it must name the
one the local stack runs, or the tests prove a different server than the config claims."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_config_major_version_is_the_local_stacks() -> None:
    config = tomllib.loads((ROOT / "supabase" / "config.toml").read_text())
    local_db = (ROOT / "scripts" / "local-db").read_text()
    found = re.search(r"^PG_MAJOR=(\d+)$", local_db, re.M)
    assert found is not None
    assert config["db"]["major_version"] == int(found.group(1))
