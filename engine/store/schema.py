"""The DDL of the migrations (`engine.store.migrations`), written once and spelled per backend.

A migration gets a `Schema`: the store's connection (its `execute`) and its `Dialect`
(`engine.store.dialect`), and asks for tables, indexes and columns by name and Python type:

    db.table("steps").create({"id": int, "run_id": str, "output": dict}, pk="id",
                             foreign_keys=[("run_id", "runs", "id")])
    db.table("steps").create_index(["run_id"])                 # idx_steps_run_id
    db.table("steps").add_column("routed", str)
    db.execute(f"CREATE INDEX ... ({db.dialect.json_get('tags', 'batch')})")   # anything else

- Column types come from `Dialect.column_type`: `str` TEXT, `int` INTEGER / BIGINT, `float` REAL /
  DOUBLE PRECISION, `bytes` BLOB / BYTEA, `bool` INTEGER / BIGINT, and a JSON document (`dict` or
  `list`) TEXT on SQLite, jsonb on PostgreSQL.
- Primary keys: one `int` column is `Dialect.integer_key` (SQLite: `INTEGER PRIMARY KEY`, an alias
  of the rowid, so an insert without an id gets one; PostgreSQL: a `BIGINT` identity); one column
  of another type is `<type> PRIMARY KEY`; a tuple is a table constraint `PRIMARY KEY (a, b)`.
- Foreign keys (`(column, other_table, other_column)`) are written on SQLite as `REFERENCES`
  clauses, as sqlite-utils wrote them for the stores made before this module, and are not
  enforced there (the store never turns on `PRAGMA foreign_keys`). PostgreSQL would enforce them,
  so they are left out there, as they always were.
- Every statement may run again: `CREATE TABLE IF NOT EXISTS`, `CREATE [UNIQUE] INDEX IF NOT
  EXISTS idx_<table>_<col1>_<col2>` (sqlite-utils' index names, which existing stores have), and
  `add_column` adds a column only where it is missing (`ADD COLUMN IF NOT EXISTS` on PostgreSQL;
  SQLite has no such clause, so `PRAGMA table_info` is asked first).
- Names are written as they are when plain (lower case, digits, `_`), else double-quoted.
  PostgreSQL cuts a name to 63 bytes (`idx_llm_calls_workflow_step_id_prompt_hash_schema_hash_input_ha`
  there); `IF NOT EXISTS` compares the cut name, so that index too is created once.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Sequence

from engine.store.dialect import Dialect

_PLAIN = re.compile(r"[a-z_][a-z0-9_]*\Z")


def _quoted(name: str) -> str:
    """A table, column or index name for DDL: as it is when plain, else double-quoted."""
    return name if _PLAIN.match(name) else '"' + name.replace('"', '""') + '"'


class Schema:
    """DDL on one connection. `execute`: the connection's own (`sqlite3.Connection.execute`,
    `psycopg.Connection.execute`), called with a statement and, where given, its parameters; it
    returns a cursor."""

    def __init__(self, execute: Callable[..., Any], dialect: Dialect):
        self._execute = execute
        self.dialect = dialect

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        """A statement as it is; with `params`, written with `?` placeholders (`Dialect.sql`)."""
        if params is None:
            return self._execute(sql)
        return self._execute(self.dialect.sql(sql), params)

    def table(self, name: str) -> Table:
        return Table(self, name)


class Table:
    def __init__(self, schema: Schema, name: str):
        self.schema = schema
        self.name = name

    def create(self, columns: dict[str, type], pk: str | tuple[str, ...] | None = None,
               foreign_keys: Iterable[tuple[str, str, str]] = ()) -> None:
        """CREATE TABLE IF NOT EXISTS, the columns in the order given."""
        dialect = self.schema.dialect
        keys = (pk,) if isinstance(pk, str) else tuple(pk or ())
        references = {column: (table, other) for column, table, other in foreign_keys}
        unknown = [c for c in (*keys, *references) if c not in columns]
        if unknown:
            raise ValueError(f"table {self.name}: key columns {unknown} are not among its columns")
        defs = []
        for column, python_type in columns.items():
            spelled = dialect.column_type(python_type)
            if isinstance(pk, str) and column == pk:
                spelled = dialect.integer_key if python_type is int else f"{spelled} PRIMARY KEY"
            if column in references and dialect.name == "sqlite":
                table, other = references[column]
                spelled += f" REFERENCES {_quoted(table)}({_quoted(other)})"
            defs.append(f"{_quoted(column)} {spelled}")
        if isinstance(pk, tuple):
            defs.append(f"PRIMARY KEY ({', '.join(_quoted(c) for c in pk)})")
        self.schema.execute(f"CREATE TABLE IF NOT EXISTS {_quoted(self.name)} ({', '.join(defs)})")

    def create_index(self, columns: Sequence[str], unique: bool = False) -> None:
        """CREATE [UNIQUE] INDEX IF NOT EXISTS idx_<table>_<columns joined by _>."""
        name = _quoted(f"idx_{self.name}_{'_'.join(columns)}")
        self.schema.execute(f"CREATE {'UNIQUE ' if unique else ''}INDEX IF NOT EXISTS {name} "
                            f"ON {_quoted(self.name)} ({', '.join(_quoted(c) for c in columns)})")

    def add_column(self, name: str, python_type: type) -> None:
        """ALTER TABLE ADD COLUMN, unless the table has that column already."""
        dialect = self.schema.dialect
        table, column, spelled = _quoted(self.name), _quoted(name), dialect.column_type(python_type)
        if dialect.name == "sqlite":
            if name in {row[1] for row in self.schema.execute(f"PRAGMA table_info({table})").fetchall()}:
                return
            self.schema.execute(f"ALTER TABLE {table} ADD COLUMN {column} {spelled}")
        else:
            self.schema.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {spelled}")
