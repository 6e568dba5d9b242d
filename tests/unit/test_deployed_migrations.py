"""Deployed migrations are immutable (docs/decisions/0001-migrations.md).

supabase/deployed-migrations.txt lists, in `sha256sum` format, the files production applied.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOYED = ROOT / "supabase" / "deployed-migrations.txt"
MIGRATIONS = "supabase/migrations"


def deployed_problems(listing: str, root: Path) -> list[str]:
    """Every way the migrations under root break the deployed list (empty when none)."""
    problems: list[str] = []
    deployed: list[str] = []
    for number, line in enumerate(listing.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, _, path = line.partition("  ")
        if len(digest) != 64 or not path.startswith(f"{MIGRATIONS}/"):
            problems.append(f"line {number}: not '<sha256>  {MIGRATIONS}/<file>': {line!r}")
            continue
        deployed.append(Path(path).name)
        file = root / path
        if not file.is_file():
            problems.append(f"{path} was deployed but is gone (renamed or deleted)")
        elif hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            problems.append(f"{path} was deployed and then edited; add a new migration instead")
    if deployed:
        last = max(deployed)
        problems += [
            f"{MIGRATIONS}/{f.name} is new but sorts before deployed {last}; "
            "give it a later version"
            for f in sorted((root / MIGRATIONS).glob("*.sql"))
            if f.name not in deployed and f.name < last
        ]
    return problems


def test_no_deployed_migration_was_changed() -> None:
    assert deployed_problems(DEPLOYED.read_text(), ROOT) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    (tmp_path / MIGRATIONS).mkdir(parents=True)
    for name, text in files.items():
        (tmp_path / MIGRATIONS / name).write_text(text)
    return tmp_path


def _line(name: str, text: str) -> str:
    return f"{hashlib.sha256(text.encode()).hexdigest()}  {MIGRATIONS}/{name}\n"


def test_an_untouched_deployed_file_and_a_later_new_one_pass(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"0001_a.sql": "create table a ();", "0002_b.sql": "select 1;"})
    assert deployed_problems("# header\n" + _line("0001_a.sql", "create table a ();"), root) == []


def test_an_edited_deleted_or_earlier_file_is_reported(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"0001_new.sql": "", "0002_a.sql": "edited", "0003_c.sql": "c"})
    listing = (
        _line("0002_a.sql", "original")
        + _line("0003_c.sql", "c")
        + _line("0004_gone.sql", "x")
        + "not a checksum line\n"
    )
    assert deployed_problems(listing, root) == [
        f"{MIGRATIONS}/0002_a.sql was deployed and then edited; add a new migration instead",
        f"{MIGRATIONS}/0004_gone.sql was deployed but is gone (renamed or deleted)",
        f"line 4: not '<sha256>  {MIGRATIONS}/<file>': 'not a checksum line'",
        f"{MIGRATIONS}/0001_new.sql is new but sorts before deployed 0004_gone.sql; "
        "give it a later version",
    ]
