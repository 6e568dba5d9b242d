"""`python -m worker stores knowledge list|add|edit|remove|import`: a store's knowledge base.

The entries (shipping, returns, payment, contact hours, FAQ) are what replies may quote as the
store's own policy. The file `import` reads is a JSON list of {"topic", "title", "body"} objects
(scripts/demo.d/knowledge.json is one); an entry is known by its title, so importing the same
file again changes nothing, and --replace also removes the entries the file no longer has.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from worker.knowledge import TOPICS

if TYPE_CHECKING:
    from worker.stores import Context

ACTOR = {"via": "cli"}
MAX_BODY_PREVIEW = 60


class KnowledgeFileError(ValueError):
    """The import file is not a JSON list of entries."""


def add_parser(sub: Any, store_id_type: Any) -> None:
    """The `knowledge` command and its actions, on the `stores` subparsers."""
    knowledge = sub.add_parser(
        "knowledge",
        help="the store's policies and answers replies may use",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        allow_abbrev=False,
    )
    actions = knowledge.add_subparsers(dest="knowledge_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="the store's entries", allow_abbrev=False)
    listing.add_argument("store_id", type=store_id_type, metavar="STORE_ID")
    listing.add_argument("--json", action="store_true")

    add = actions.add_parser("add", help="add an entry (or replace the one with its title)")
    add.add_argument("store_id", type=store_id_type, metavar="STORE_ID")
    add.add_argument("--topic", choices=TOPICS, required=True)
    add.add_argument("--title", required=True)
    _body_flags(add, required=True)

    edit = actions.add_parser("edit", help="change an entry's topic, title or text")
    edit.add_argument("store_id", type=store_id_type, metavar="STORE_ID")
    edit.add_argument("entry_id", type=store_id_type, metavar="ENTRY_ID")
    edit.add_argument("--topic", choices=TOPICS)
    edit.add_argument("--title")
    _body_flags(edit, required=False)

    remove = actions.add_parser("remove", help="remove an entry")
    remove.add_argument("store_id", type=store_id_type, metavar="STORE_ID")
    remove.add_argument("entry_id", type=store_id_type, metavar="ENTRY_ID")

    load = actions.add_parser("import", help="add or update entries from a JSON file")
    load.add_argument("store_id", type=store_id_type, metavar="STORE_ID")
    load.add_argument("file", type=Path, metavar="FILE")
    load.add_argument(
        "--replace", action="store_true", help="also remove entries whose title is not in FILE"
    )


def _body_flags(parser: argparse.ArgumentParser, *, required: bool) -> None:
    body = parser.add_mutually_exclusive_group(required=required)
    body.add_argument("--body", help="the text")
    body.add_argument("--body-file", type=Path, metavar="FILE", help="read the text from FILE")


def _body(args: argparse.Namespace) -> str | None:
    if args.body_file is not None:
        return str(args.body_file.read_text(encoding="utf-8"))
    return cast(str | None, args.body)


def read_entries(path: Path) -> list[dict[str, str]]:
    """The entries of an import file; raises KnowledgeFileError naming what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise KnowledgeFileError(f"{path}: {exc}") from exc
    if not isinstance(data, list):
        raise KnowledgeFileError(f"{path}: expected a JSON list of entries")
    entries: list[dict[str, str]] = []
    for number, item in enumerate(data, 1):
        if not isinstance(item, dict) or not all(
            isinstance(item.get(key), str) for key in ("topic", "title", "body")
        ):
            raise KnowledgeFileError(f"{path}: entry {number} needs topic, title and body strings")
        entries.append({key: item[key] for key in ("topic", "title", "body")})
    return entries


def entry_table(entries: list[dict[str, Any]]) -> str:
    """One line per entry: id, topic, title and the start of its text."""
    lines = []
    for entry in entries:
        text = " ".join(str(entry["body"]).split())
        if len(text) > MAX_BODY_PREVIEW:
            text = text[: MAX_BODY_PREVIEW - 1] + "…"
        lines.append(f"{entry['id']}  {entry['topic']:<8}  {entry['title']}  | {text}")
    return "\n".join(lines)


def run(ctx: Context, args: argparse.Namespace) -> int:
    """Run one knowledge action; returns the exit code (0 ok, 1 not found)."""
    db, store_id, action = ctx.db, args.store_id, args.knowledge_command
    if action in ("list", "edit", "import") and db.get_store(store_id) is None:
        raise LookupError(f"{store_id}: no such store")
    if action == "list":
        entries = db.list_knowledge(store_id)
        if args.json:
            print(json.dumps(entries, ensure_ascii=False, indent=2, default=str))
        elif entries:
            print(entry_table(entries))
        else:
            _say(f"store {store_id} has no knowledge entries")
        return 0
    if action == "add":
        entry = {"topic": args.topic, "title": args.title, "body": _body(args)}
        row = db.save_knowledge(store_id, entry, ACTOR)
        print(row["id"])
        _say(f"saved '{row['title']}' ({row['topic']})")
        return 0
    if action == "edit":
        current = next((e for e in db.list_knowledge(store_id) if e["id"] == args.entry_id), None)
        if current is None:
            raise LookupError(f"{args.entry_id}: no such entry in store {store_id}")
        body = _body(args)
        entry = {
            "id": args.entry_id,
            "topic": args.topic or current["topic"],
            "title": args.title or current["title"],
            "body": body if body is not None else current["body"],
        }
        row = db.save_knowledge(store_id, entry, ACTOR)
        _say(f"updated '{row['title']}' ({row['topic']})")
        return 0
    if action == "remove":
        if not db.remove_knowledge(store_id, args.entry_id, ACTOR):
            raise LookupError(f"{args.entry_id}: no such entry in store {store_id}")
        _say(f"removed {args.entry_id}")
        return 0
    result = db.import_knowledge(store_id, read_entries(args.file), args.replace, ACTOR)
    _say(f"imported {result['saved']} entries into store {store_id}; removed {result['removed']}")
    return 0


def _say(text: str) -> None:
    print(text, file=sys.stderr)
