"""The documentation: a short README, and a workflow-format reference generated from `engine schema`.

The site itself is built by `.ci/run` (`mkdocs build --strict`); these tests check what the build
relies on without running MkDocs.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import yaml
from click.testing import CliRunner

from engine.cli import cli

ROOT = Path(__file__).resolve().parents[1]
SETUP = ('python3 -m venv .venv && . .venv/bin/activate && CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON '
         '-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF" pip install -e \'.[dev]\' && engine run '
         'examples/support_triage/workflow.yaml --input ticket="I still haven\'t received my new card"')
TESTS = ". .venv/bin/activate && python -m pytest"


def _hooks():
    spec = importlib.util.spec_from_file_location("engine_docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_is_a_short_landing_page_with_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 260
    lines = readme.splitlines()
    assert SETUP in lines and TESTS in lines
    assert "mkdocs serve" in readme


def test_every_page_the_readme_links_into_docs_exists():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[^)#]*)", readme)
    assert links
    for link in links:
        assert (ROOT / link).exists(), link


def test_every_nav_page_exists_and_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))

    def pages(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from pages(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from pages(value)

    nav = set(pages(config["nav"]))
    docs = ROOT / "docs"
    on_disk = {p.relative_to(docs).as_posix() for p in docs.rglob("*.md")}
    assert nav <= on_disk, nav - on_disk
    assert on_disk <= nav, on_disk - nav


def test_the_workflow_format_reference_is_what_engine_schema_prints():
    hooks = _hooks()
    printed = json.loads(CliRunner().invoke(cli, ["schema"]).output)
    assert hooks.engine_schema() == printed

    page = (ROOT / "docs" / "reference" / "workflow-format.md").read_text(encoding="utf-8")
    assert hooks.TABLES in page and hooks.JSON in page
    built = hooks.on_page_markdown(page, None, None, None)
    assert hooks.TABLES not in built and hooks.JSON not in built
    # every definition of the schema gets its own table, with every one of its keys
    for name, definition in printed["$defs"].items():
        assert f"### {name}\n" in built, name
        for key in definition.get("properties", {}):
            assert f"| `{key}` |" in built, (name, key)
    for key in printed["properties"]:
        assert f"| `{key}` |" in built, key
    # and the schema itself, verbatim, inside the collapsed block
    block = built.split("```json\n", 1)[1].split("```", 1)[0]
    assert json.loads(block) == printed


def test_the_schema_tables_name_each_field_type_default_and_meaning():
    hooks = _hooks()
    schema = {
        "properties": {
            "name": {"type": "string", "description": "who | what"},
            "size": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
            "mode": {"enum": ["a", "b"], "default": "a"},
            "step": {"$ref": "#/$defs/Step"},
        },
        "required": ["name"],
        "$defs": {"Step": {"description": "One step.", "properties": {"id": {"type": "string"}}}},
    }
    text = hooks.schema_tables(schema)
    assert "| `name` | string | required | who \\| what |" in text
    assert "| `size` | integer \\| null | `null` |  |" in text
    assert '| `mode` | `"a"` \\| `"b"` | `"a"` |  |' in text
    assert "| `step` | [Step](#step) |  |  |" in text
    assert "### Step\n\nOne step.\n" in text


def test_the_docs_speak_of_the_project_not_of_how_it_was_built():
    wording = re.compile(r"\b(this session|previous revision|a later stop|the original brief|the issue)\b|issue \d+",
                         re.IGNORECASE)
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        assert not wording.search(text), (path, wording.search(text))
