"""`python -m worker stores knowledge ...` against the real database: every action, the import
file (twice is once; --replace), and the exit codes for bad input and unknown ids."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import DictRow

from worker import stores

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO_KNOWLEDGE = ROOT / "scripts" / "demo.d" / "knowledge.json"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def store_id(db: psycopg.Connection[DictRow]) -> str:
    """A fresh store of this test's own."""
    tag = uuid.uuid4().hex[:8]
    row = db.execute(
        "insert into public.stores (name, support_email, imap_host, imap_port, imap_user,"
        " smtp_host, smtp_port, smtp_user) values (%s, %s, 'imap.k.test', 993, 'k',"
        " 'smtp.k.test', 587, 'k') returning id",
        (f"Knowledge {tag}", f"help-{tag}@k.test"),
    ).fetchone()
    assert row is not None
    return str(row["id"])


def run(capsys: pytest.CaptureFixture[str], database_url: str, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = stores.main(["knowledge", *argv], environ={"DATABASE_URL": database_url})
    out, err = capsys.readouterr()
    return code, out, err


def entries(db: psycopg.Connection[DictRow], store_id: str) -> list[dict[str, Any]]:
    return list(
        db.execute(
            "select id::text, topic, title, body from public.store_knowledge"
            " where store_id = %s order by title",
            (store_id,),
        ).fetchall()
    )


def test_add_list_edit_and_remove(
    capsys: pytest.CaptureFixture[str],
    database_url: str,
    db: psycopg.Connection[DictRow],
    store_id: str,
    tmp_path: Path,
) -> None:
    code, out, _ = run(
        capsys,
        database_url,
        "add",
        store_id,
        "--topic",
        "returns",
        "--title",
        "Trocas",
        "--body",
        "Trocas em até 30 dias.",
    )
    assert code == 0
    entry_id = out.strip()
    assert entries(db, store_id) == [
        {"id": entry_id, "topic": "returns", "title": "Trocas", "body": "Trocas em até 30 dias."}
    ]

    code, out, _ = run(capsys, database_url, "list", store_id)
    assert code == 0 and entry_id in out and "returns" in out and "Trocas em até 30" in out
    code, out, _ = run(capsys, database_url, "list", store_id, "--json")
    assert [e["title"] for e in json.loads(out)] == ["Trocas"]

    body = tmp_path / "trocas.txt"
    body.write_text("Trocas e devoluções em até 30 dias corridos.\n", encoding="utf-8")
    code, _, err = run(
        capsys,
        database_url,
        "edit",
        store_id,
        entry_id,
        "--title",
        "Trocas e devoluções",
        "--body-file",
        str(body),
    )
    assert code == 0, err
    [entry] = entries(db, store_id)
    assert (entry["id"], entry["topic"], entry["title"], entry["body"]) == (
        entry_id,
        "returns",
        "Trocas e devoluções",
        "Trocas e devoluções em até 30 dias corridos.",
    )

    code, _, _ = run(capsys, database_url, "remove", store_id, entry_id)
    assert code == 0 and entries(db, store_id) == []
    code, _, err = run(capsys, database_url, "remove", store_id, entry_id)
    assert code == 1 and "no such entry" in err


def test_import_twice_is_once_and_replace_removes_the_rest(
    capsys: pytest.CaptureFixture[str],
    database_url: str,
    db: psycopg.Connection[DictRow],
    store_id: str,
    tmp_path: Path,
) -> None:
    demo = json.loads(DEMO_KNOWLEDGE.read_text(encoding="utf-8"))
    for _ in range(2):
        code, _, err = run(capsys, database_url, "import", store_id, str(DEMO_KNOWLEDGE))
        assert code == 0 and f"imported {len(demo)} entries" in err
    assert sorted(e["title"] for e in entries(db, store_id)) == sorted(e["title"] for e in demo)

    smaller = tmp_path / "smaller.json"
    smaller.write_text(json.dumps(demo[:3], ensure_ascii=False), encoding="utf-8")
    code, _, err = run(capsys, database_url, "import", store_id, str(smaller), "--replace")
    assert code == 0 and f"removed {len(demo) - 3}" in err
    assert sorted(e["title"] for e in entries(db, store_id)) == sorted(e["title"] for e in demo[:3])


def test_bad_input_is_a_usage_error_and_saves_nothing(
    capsys: pytest.CaptureFixture[str],
    database_url: str,
    db: psycopg.Connection[DictRow],
    store_id: str,
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            [
                {"topic": "faq", "title": "Fine", "body": "ok"},
                {"topic": "weather", "title": "Bad topic", "body": "x"},
            ]
        ),
        encoding="utf-8",
    )
    code, _, err = run(capsys, database_url, "import", store_id, str(bad))
    assert code == 2 and "topic must be one of" in err
    assert entries(db, store_id) == []  # one transaction: the good entry is not saved either

    not_a_list = tmp_path / "object.json"
    not_a_list.write_text('{"topic": "faq"}', encoding="utf-8")
    code, _, err = run(capsys, database_url, "import", store_id, str(not_a_list))
    assert code == 2 and "expected a JSON list" in err

    code, _, err = run(capsys, database_url, "add", store_id, "--topic", "faq", "--title", "x")
    assert code == 2  # a text is required

    code, _, err = run(capsys, database_url, "list", UNKNOWN_ID)
    assert code == 1 and "no such store" in err


def test_the_command_line_entry_point_reaches_it(database_url: str, store_id: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "worker", "stores", "knowledge", "list", store_id, "--json"],
        capture_output=True,
        text=True,
        env={"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
