"""Print the SQL that records one applied migration, as `supabase db push` does.

Usage: record_migration.py FILE VERSION NAME. The Supabase CLI stores a migration's statements
one per array element; this splits the file the same way (on top-level semicolons, respecting
quotes, dollar quotes and comments) so `schema_migrations` looks the same locally.
"""

from __future__ import annotations

import json
import re
import secrets
import sys

_DOLLAR_TAG = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*\$|\$\$")


def split_statements(sql: str) -> list[str]:
    """Split SQL text into its top-level statements, without the trailing semicolons."""
    statements: list[str] = []
    start = 0
    i = 0
    n = len(sql)
    while i < n:
        ch = sql[i]
        if ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end == -1 else end + 1
        elif ch == "/" and sql.startswith("/*", i):
            depth = 1
            i += 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif ch in "'\"":
            backslash_escapes = ch == "'" and i > 0 and sql[i - 1] in "eE"
            i += 1
            while i < n:
                if backslash_escapes and sql[i] == "\\":
                    i += 2
                elif sql[i] == ch:
                    if sql.startswith(ch * 2, i):
                        i += 2
                    else:
                        i += 1
                        break
                else:
                    i += 1
        elif ch == "$" and (match := _DOLLAR_TAG.match(sql, i)):
            end = sql.find(match.group(), match.end())
            i = n if end == -1 else end + len(match.group())
        elif ch == ";":
            statements.append(sql[start:i].strip())
            i += 1
            start = i
        else:
            i += 1
    statements.append(sql[start:].strip())
    return [s for s in statements if s and not _only_comments(s)]


def _only_comments(statement: str) -> bool:
    without = re.sub(r"--[^\n]*|/\*.*?\*/", "", statement, flags=re.S)
    return not without.strip()


def dollar_quote(text: str) -> str:
    """Quote text as a dollar-quoted literal whose tag does not occur in it."""
    while True:
        tag = f"$m{secrets.token_hex(4)}$"
        if tag not in text:
            return f"{tag}{text}{tag}"


def record_sql(sql: str, version: str, name: str) -> str:
    """The INSERT that records a migration's version, name and statements."""
    statements = json.dumps(split_statements(sql))
    return (
        "insert into supabase_migrations.schema_migrations (version, name, statements)\n"
        f"select {dollar_quote(version)}, {dollar_quote(name)},\n"
        f"  array(select jsonb_array_elements_text({dollar_quote(statements)}::jsonb));\n"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        sys.stdout.write(record_sql(f.read(), argv[2], argv[3]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
