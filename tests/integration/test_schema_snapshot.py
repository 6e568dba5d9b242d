"""supabase/schema.sql is the schema the migrations produce (scripts/schema-snapshot)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "schema-snapshot"
SNAPSHOT_TIMEOUT = 300  # seconds; applying the migrations to a scratch database takes a few


def _snapshot(database_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    port = str(conninfo_to_dict(database_url).get("port", "5432"))
    return subprocess.run(
        [str(SCRIPT), *args],
        env=dict(os.environ, PGPORT=port, **env),
        capture_output=True,
        text=True,
        check=False,
        timeout=SNAPSHOT_TIMEOUT,
    )


def test_snapshot_matches_the_migrations(database_url: str) -> None:
    proc = _snapshot(database_url, "--check")
    assert proc.returncode == 0, (
        "supabase/schema.sql disagrees with supabase/migrations; regenerate it with "
        f"`scripts/schema-snapshot --write` and commit it.\n{proc.stdout}\n{proc.stderr}"
    )


def test_check_fails_and_names_the_command_when_a_migration_drifts(
    database_url: str, tmp_path: Path
) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(ROOT / "supabase" / "migrations", migrations)
    (migrations / "20991231000000_drift.sql").write_text(
        "create table public.drift_probe (id int);\n"
    )
    proc = _snapshot(database_url, "--check", MIGRATIONS_DIR=str(migrations))
    assert proc.returncode == 1, proc.stderr
    assert "+CREATE TABLE public.drift_probe (" in proc.stdout
    assert "scripts/schema-snapshot --write" in proc.stderr
