"""YAML parsing that remembers where every value came from, for file:line:column errors."""

from __future__ import annotations

from typing import Any

import yaml

Path_ = tuple[Any, ...]


class PositionMap:
    """Maps a data path like ('steps', 1, 'llm', 'max_tokens') to (line, column), 1-based."""

    def __init__(self, filename: str):
        self.filename = filename
        self.marks: dict[Path_, tuple[int, int]] = {}

    def locate(self, path: Path_) -> str:
        for n in range(len(path), -1, -1):
            pos = self.marks.get(tuple(path[:n]))
            if pos:
                return f"{self.filename}:{pos[0]}:{pos[1]}"
        return f"{self.filename}:1:1"

    def _walk(self, node: yaml.Node, path: Path_) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value
                self.marks[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                self._walk(value_node, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.marks[path + (i,)] = (item.start_mark.line + 1, item.start_mark.column + 1)
                self._walk(item, path + (i,))


class YAMLSyntaxError(Exception):
    def __init__(self, location: str, message: str):
        self.location = location
        self.message = message
        super().__init__(f"{location}: {message}")


def parse_yaml(text: str, filename: str) -> tuple[Any, PositionMap]:
    """Parse YAML text; return (data, positions). Raises YAMLSyntaxError with a location."""
    positions = PositionMap(filename)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        loc = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else f"{filename}:1:1"
        message = f"YAML syntax error: {e.problem or e}"
        if e.context and e.context_mark is not None and e.context_mark is not mark:
            message += f" ({e.context} at line {e.context_mark.line + 1}, column {e.context_mark.column + 1})"
        raise YAMLSyntaxError(loc, message) from e
    except yaml.YAMLError as e:
        raise YAMLSyntaxError(f"{filename}:1:1", f"YAML error: {e}") from e
    if node is not None:
        positions.marks[()] = (node.start_mark.line + 1, node.start_mark.column + 1)
        positions._walk(node, ())
    return data, positions


def field_path(path: Path_, data: Any = None) -> str:
    """Render ('steps', 1, 'llm', 'max_tokens') as 'steps[1](classify).llm.max_tokens'."""
    out = ""
    cursor = data
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            try:
                cursor = cursor[part]
                if isinstance(cursor, dict) and isinstance(cursor.get("id"), str):
                    out += f"({cursor['id']})"
            except (IndexError, KeyError, TypeError):
                cursor = None
        else:
            out += ("." if out else "") + str(part)
            cursor = cursor.get(part) if isinstance(cursor, dict) else None
    return out


def pydantic_problems(e: Any, data: Any) -> list[tuple[tuple[Any, ...], str]]:
    """One message per data location; union noise collapsed into the first member's message."""
    out: dict[tuple[Any, ...], str] = {}
    for err in e.errors():
        loc = tuple(err["loc"])
        # Drop union-member tags (e.g. 'MissDefault', "literal['error']", 'str') from the path.
        clean: list[Any] = []
        cursor = data
        for part in loc:
            if isinstance(part, int) and isinstance(cursor, list) and part < len(cursor):
                clean.append(part)
                cursor = cursor[part]
            elif isinstance(part, str) and isinstance(cursor, dict) and part in cursor:
                clean.append(part)
                cursor = cursor[part]
            elif err["type"] in ("missing", "extra_forbidden") and part == loc[-1]:
                clean.append(part)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown key '{loc[-1]}'"
        elif err["type"] == "missing":
            msg = f"missing required field '{loc[-1]}'"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        out.setdefault(tuple(clean), msg)
    return list(out.items())
