"""`engine/store/` owns every SQL statement: no module of `engine/` outside it holds SQL text.

The source of every module is parsed with `ast` and each string literal (f-string parts included,
docstrings left out) is checked for the start of a SQL statement (`SELECT ... FROM`, `INSERT INTO`,
`UPDATE ... SET`, `DELETE FROM`, `CREATE TABLE`, ...) or a SQL clause with a `?` placeholder
(`WHERE x = ?`, `AND y > ?`), the fragments a caller would splice into a statement. Upper-case
keywords only, so prose that happens to say "select" or "update" does not count."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "engine"

_STATEMENT = re.compile(
    r"""^\s*(?:
        SELECT\s+(?:DISTINCT\s+)?[\w*(].*?\bFROM\b
      | SELECT\s+(?:COUNT|SUM|MAX|MIN|AVG|COALESCE|1)\b
      | INSERT\s+(?:OR\s+\w+\s+)?INTO\b
      | UPDATE\s+\w+\s+SET\b
      | DELETE\s+FROM\b
      | CREATE\s+(?:UNIQUE\s+)?(?:TABLE|INDEX|VIEW|TRIGGER|EXTENSION)\b
      | ALTER\s+TABLE\b
      | DROP\s+(?:TABLE|INDEX|VIEW|TRIGGER)\b
      | WITH\s+(?:RECURSIVE\s+)?\w+\s+AS\s*\(
      | (?:BEGIN|COMMIT|ROLLBACK)(?:\s+(?:IMMEDIATE|TRANSACTION))?\s*;?\s*$
      | PRAGMA\s+\w+
    )""", re.S | re.X)
_CLAUSE = re.compile(
    r"\b(?:WHERE|AND|OR|SET|ON|HAVING)\s+[\w.()]+\s*(?:=|<>|!=|<=|>=|<|>|IN|LIKE|IS)\s*\(?\s*\?"
    r"|\b(?:ORDER|GROUP)\s+BY\s+\w+|\bLIMIT\s+\?|\bON\s+CONFLICT\b|\bRETURNING\s+\w+")


def is_sql(text: str) -> bool:
    """Whether a string literal is (the start of, or a clause of) a SQL statement."""
    return bool(_STATEMENT.match(text) or _CLAUSE.search(text))


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
        # attribute docstrings: a bare string right after an assignment
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list):
                for stmt in stmts:
                    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                        ids.add(id(stmt.value))
    return ids


def sql_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of each string literal in `source` that is SQL."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):  # an f-string: read whole, each {...} as a name
            text = "".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)
            skip.update(id(v) for v in node.values)
            if is_sql(text):
                found.append((node.lineno, text))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if is_sql(node.value):
                found.append((node.lineno, node.value))
    return found


def _modules_outside_store() -> list[Path]:
    return sorted(p for p in ENGINE.rglob("*.py") if "store" not in p.relative_to(ENGINE).parts[:1])


def test_nothing_outside_engine_store_speaks_sql():
    offenders = []
    for path in _modules_outside_store():
        for line, text in sql_literals(path.read_text(encoding="utf-8")):
            offenders.append(f"{path.relative_to(ENGINE.parent)}:{line}: {text.strip()[:70]!r}")
    assert not offenders, "SQL outside engine/store/ (move it into a module there):\n" + "\n".join(offenders)


def test_the_store_package_is_where_the_sql_is():
    """The check finds the SQL where it belongs (so a scan that found nothing anywhere fails)."""
    inside = [hit for p in sorted((ENGINE / "store").rglob("*.py")) for hit in sql_literals(p.read_text())]
    assert len(inside) > 20


@pytest.mark.parametrize("text", [
    "SELECT * FROM runs WHERE id = ?", "SELECT COUNT(*) AS n FROM quality_checks",
    "  INSERT INTO cache_entries (key, value) VALUES (?, ?)", "INSERT OR IGNORE INTO t (a) VALUES (?)",
    "UPDATE promotions SET status = ? WHERE id = ?", "DELETE FROM provider_batches WHERE id = ?",
    "CREATE TABLE IF NOT EXISTS t (a TEXT)", "CREATE UNIQUE INDEX i ON t (a)", "ALTER TABLE t ADD COLUMN b",
    "DROP TABLE t", "WITH recent AS (SELECT 1) SELECT * FROM recent", "BEGIN IMMEDIATE", "COMMIT",
    " AND workflow = ?", "WHERE step_id = ? ", " ORDER BY id DESC", " LIMIT ?", "ON CONFLICT (key) DO NOTHING",
    "status IN (?, ?) AND created_at > ?",
])
def test_sql_is_recognised(text):
    assert is_sql(text)


@pytest.mark.parametrize("text", [
    "select a tier for this step", "Update the cache when a promotion is approved.", "SELECT",
    "created", "DELETE", "the run was updated", "CREATE a workflow first: engine init", "order by cost",
    "With this, runs are cheaper.", "Begin here", "commit", "WHERE", "{step_id}: {status}",
])
def test_prose_is_not_sql(text):
    assert not is_sql(text)


def test_docstrings_are_left_out():
    source = 'def f():\n    """SELECT * FROM runs WHERE id = ? is what this did."""\n    return "x"\n'
    assert sql_literals(source) == []
    assert [line for line, _ in sql_literals('q = "DELETE FROM runs WHERE id = ?"\n')] == [1]
    assert [line for line, _ in sql_literals('q = f"SELECT id FROM {table} WHERE a = ?"\n')] == [1]
    assert [line for line, _ in sql_literals('q = f" AND {column} = ?"\n')] == [1]  # read whole
