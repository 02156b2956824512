"""MkDocs hooks: pages generated from the code at build time.

- `<!-- engine-schema:tables -->` and `<!-- engine-schema:json -->` in a page become the workflow
  format's field tables and its JSON Schema, both taken from `engine schema` (the CLI command
  itself, run through click), so the reference cannot drift from the code.
- The benchmark charts under `examples/benchmarks/results/` join the site at that path, so pages
  show them without copies in `docs/`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHARTS = "examples/benchmarks/results"
TABLES = "<!-- engine-schema:tables -->"
JSON = "<!-- engine-schema:json -->"


def engine_schema() -> dict[str, Any]:
    """What `engine schema` prints, parsed."""
    from click.testing import CliRunner

    from engine.cli import cli

    result = CliRunner().invoke(cli, ["schema"], catch_exceptions=False)
    if result.exit_code != 0:
        raise RuntimeError(f"engine schema exited {result.exit_code}: {result.output}")
    return json.loads(result.output)


def _type_of(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "enum" in prop:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    for key in ("anyOf", "oneOf"):
        if key in prop:
            kinds = [_type_of(p) for p in prop[key]]
            return " \\| ".join(dict.fromkeys(k for k in kinds if k))
    kind = prop.get("type")
    if kind == "array":
        items = prop.get("items")
        return f"list of {_type_of(items)}" if items else "list"
    if kind == "object":
        extra = prop.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            return f"mapping of {_type_of(extra)}"
        return "mapping"
    if isinstance(kind, list):
        return " \\| ".join(str(k) for k in kind)
    if kind == "string" and "pattern" in prop:
        return f"string (`{prop['pattern']}`)"
    return str(kind) if kind else "any"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(name: str, schema: dict[str, Any]) -> str:
    lines = [f"### {name}", ""]
    if schema.get("description"):
        lines += [_cell(schema["description"]), ""]
    props = schema.get("properties", {})
    if not props:
        lines += [f"Type: {_type_of(schema)}.", ""]
        return "\n".join(lines)
    required = set(schema.get("required", []))
    lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, prop in props.items():
        if "default" in prop:
            default = f"`{json.dumps(prop['default'])}`"
        else:
            default = "required" if key in required else ""
        lines.append(f"| `{key}` | {_type_of(prop)} | {default} | {_cell(prop.get('description', ''))} |")
    lines.append("")
    return "\n".join(lines)


def schema_tables(schema: dict[str, Any]) -> str:
    """The workflow format as Markdown: the top level, then each definition in name order."""
    top = {k: v for k, v in schema.items() if k != "$defs"}
    parts = [_table("Workflow", top)]
    for name in sorted(schema.get("$defs", {})):
        parts.append(_table(name, schema["$defs"][name]))
    return "\n".join(parts)


def schema_json(schema: dict[str, Any]) -> str:
    return "```json\n" + json.dumps(schema, indent=2, ensure_ascii=False) + "\n```\n"


def _fill(markdown: str, marker: str, text: str) -> str:
    """Replace each line holding only `marker` by `text`, indented as the marker was."""
    out = []
    for line in markdown.split("\n"):
        if line.strip() == marker:
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + t if t else t for t in text.split("\n"))
        else:
            out.append(line)
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if TABLES in markdown or JSON in markdown:
        schema = engine_schema()
        markdown = _fill(_fill(markdown, TABLES, schema_tables(schema)), JSON, schema_json(schema))
    return markdown


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for chart in sorted((ROOT / CHARTS).glob("*.png")):
        files.append(File(f"{CHARTS}/{chart.name}", str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files
