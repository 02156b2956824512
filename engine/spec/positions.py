"""YAML parsing that remembers where every value came from, for file:line:column errors."""

from __future__ import annotations

import os
import stat
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

    def _walk(self, root: yaml.Node) -> None:
        """Record where every value is. Iterative, and each node (an anchor used by many aliases)
        is descended into once: an alias bomb costs its size on disk, not its expansion."""
        seen: set[int] = set()
        stack: list[tuple[yaml.Node, Path_]] = [(root, ())]
        while stack:
            node, path = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    key = key_node.value
                    self.marks.setdefault(path + (key,), (key_node.start_mark.line + 1, key_node.start_mark.column + 1))
                    stack.append((value_node, path + (key,)))
            elif isinstance(node, yaml.SequenceNode):
                for i, item in enumerate(node.value):
                    self.marks.setdefault(path + (i,), (item.start_mark.line + 1, item.start_mark.column + 1))
                    stack.append((item, path + (i,)))


class YAMLSyntaxError(Exception):
    """A file that cannot be read as YAML (syntax, encoding, aliases, duplicates, size)."""

    def __init__(self, location: str, message: str):
        self.location = location
        self.message = message
        super().__init__(f"{location}: {message}")


MAX_YAML_CHARS = 5_000_000
MAX_VALUES = 200_000
MAX_DEPTH = 100


def _mark(filename: str, node: yaml.Node) -> str:
    return f"{filename}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"


def check_node(root: yaml.Node, filename: str) -> None:
    """Refuse what would hang or crash whoever walks the data: a self-referencing alias, more
    than MAX_VALUES values once aliases are expanded (an alias bomb), nesting deeper than
    MAX_DEPTH, and duplicate keys. Linear in the number of distinct nodes."""
    size: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if done:
            active.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            if size[id(node)] > MAX_VALUES:
                raise YAMLSyntaxError(_mark(filename, node), f"the document expands to more than {MAX_VALUES:,} "
                                                             f"values (aliases); refusing to load it")
            continue
        if id(node) in size:
            continue
        if id(node) in active:
            raise YAMLSyntaxError(_mark(filename, node), "an alias refers to a node that contains it "
                                                         "(a self-referencing alias)")
        if depth > MAX_DEPTH:
            raise YAMLSyntaxError(_mark(filename, node), f"nesting deeper than {MAX_DEPTH} levels")
        if isinstance(node, yaml.MappingNode):
            first: dict[str, yaml.Node] = {}
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                    if key_node.value in first:
                        line = first[key_node.value].start_mark.line + 1
                        raise YAMLSyntaxError(_mark(filename, key_node),
                                              f"duplicate key '{key_node.value}' (first at line {line})")
                    first[key_node.value] = key_node
        active.add(id(node))
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in children)


def parse_yaml(text: str, filename: str) -> tuple[Any, PositionMap]:
    """Parse YAML text; return (data, positions). Raises YAMLSyntaxError with a location."""
    positions = PositionMap(filename)
    if len(text) > MAX_YAML_CHARS:
        raise YAMLSyntaxError(f"{filename}:1:1", f"the file is {len(text):,} characters (at most {MAX_YAML_CHARS:,})")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            return None, positions
        check_node(node, filename)
        loader = yaml.SafeLoader("")
        try:
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        loc = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else f"{filename}:1:1"
        message = f"YAML syntax error: {e.problem or e}"
        if e.context and e.context_mark is not None and e.context_mark is not mark:
            message += f" ({e.context} at line {e.context_mark.line + 1}, column {e.context_mark.column + 1})"
        raise YAMLSyntaxError(loc, message) from e
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise YAMLSyntaxError(f"{filename}:{line}:{column}", f"YAML error: character #x{e.character:04x} is not "
                                                             f"allowed in YAML (control characters)") from None
    except yaml.YAMLError as e:
        raise YAMLSyntaxError(f"{filename}:1:1", f"YAML error: {str(e).splitlines()[0]}") from e
    except RecursionError:
        raise YAMLSyntaxError(f"{filename}:1:1", f"nesting deeper than {MAX_DEPTH} levels") from None
    positions.marks[()] = (node.start_mark.line + 1, node.start_mark.column + 1)
    positions._walk(node)
    return data, positions


MAX_FILE_BYTES = 20_000_000
"""The largest file read by default (a workflow, prompt or schema file); callers may allow more."""


def read_text(path: Any, filename: str | None = None, max_bytes: int = MAX_FILE_BYTES) -> str:
    """A file's text as UTF-8, or YAMLSyntaxError naming the file and the first bad byte. Only a
    regular file is read (a device, pipe or socket is refused before it is opened), and only one
    of at most `max_bytes` (checked before reading, and again while reading in case it grows)."""
    name = filename or str(path)
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise YAMLSyntaxError(f"{name}:1:1", "not a regular file (devices, pipes and sockets are not read)")
    if info.st_size > max_bytes:
        raise YAMLSyntaxError(f"{name}:1:1", f"the file is {info.st_size:,} bytes (at most {max_bytes:,})")
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise YAMLSyntaxError(f"{name}:1:1", f"the file is more than {max_bytes:,} bytes")
    try:
        return str(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise YAMLSyntaxError(f"{filename or path}:1:1", f"the file is not UTF-8 text "
                                                         f"(byte 0x{data[e.start]:02x} at offset {e.start})") from None


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
