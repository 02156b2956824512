"""One SQL, two dialects: statements are written once, with `?` placeholders, and compiled per
backend by a small scanner (string literals and quoted names are left alone; no pattern rewriting
of SQL text). What the dialects spell differently is asked of a `Dialect`:

    SQLITE.json_get("tags", "batch")     ->  json_extract(tags, '$."batch"')
    POSTGRES.json_get("tags", "batch")   ->  (tags::jsonb ->> 'batch')    (a no-op cast on jsonb)

- `SQLITE.sql(text)`: the text itself (sqlite3 takes `?`).
- `POSTGRES.sql(text)`: `?` as `%s`, `%` as `%%` (psycopg's placeholders).
- `numbered(text)`: `?` as `$1, $2, ...` (libpq's own, for the pipelined writer).
- `json_type`: the column type of JSON documents (TEXT on SQLite, jsonb on PostgreSQL).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@lru_cache(maxsize=4096)
def _compile(sql: str, style: str) -> str:
    """`sql` with each `?` outside quotes as a `style` placeholder: "pyformat" (`%s`, and `%` as
    `%%`) or "numbered" (`$n`)."""
    out: list[str] = []
    quote = ""
    n = 0
    for ch in sql:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in ("'", '"'):
            quote = ch
        elif ch == "?":
            n += 1
            out.append("%s" if style == "pyformat" else f"${n}")
            continue
        if ch == "%" and style == "pyformat":
            out.append("%%")
            continue
        out.append(ch)
    if quote:
        raise ValueError(f"unterminated quote in SQL: {sql[:120]}")
    return "".join(out)


def numbered(sql: str) -> str:
    """`?` placeholders as `$1, $2, ...` (libpq's prepared statements)."""
    return _compile(sql, "numbered")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Dialect:
    name: str
    json_type: str

    def sql(self, text: str) -> str:
        """A statement written with `?` placeholders, for this backend's driver."""
        return text if self.name == "sqlite" else _compile(text, "pyformat")

    def json_get(self, column: str, key: str) -> str:
        """A JSON column's top-level field as text (a constant key, inlined as a literal)."""
        if self.name == "sqlite":
            path = key if key.isidentifier() else _quoted_key(key)
            return f"json_extract({column}, {_literal('$.' + path)})"
        return f"({column}::jsonb ->> {_literal(key)})"

    def json_field(self, column: str, key: str) -> tuple[str, list[str]]:
        """A JSON column's top-level field as text, the key a parameter: (sql, params)."""
        if self.name == "sqlite":
            return f"json_extract({column}, ?)", [f"$.{_quoted_key(key)}"]
        return f"({column}::jsonb ->> ?)", [key]


def _quoted_key(key: str) -> str:
    return '"' + key.replace('"', '\\"') + '"'


SQLITE = Dialect("sqlite", "TEXT")
POSTGRES = Dialect("postgresql", "JSONB")
