"""Fuzz: mutated copies of every example workflow load or fail with the project's own errors.

Each example is copied (with its helper files) and mutated a few hundred times: lines deleted,
duplicated (duplicate keys), re-indented or cut off; values replaced by wrong types, huge or
non-finite numbers, aliases (self-referencing too), broken templates, control characters; bytes
that are not UTF-8. Loading must give a Workflow or an EngineError: 0 crashes of another type.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.errors import EngineError
from engine.spec import load_workflow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted([*ROOT.glob("workflows/*.yaml"), *ROOT.glob("examples/*/workflow.yaml")])
VALUES = ["true", "-1", "0", "1e999", ".nan", "-.inf", "[]", "{}", "null", '"{{ broken"', "'{% for %}'",
          "*nope", "&a [*a]", "2000000000000", '"\\e[31mred\\x9b"', "x" * 5000, "{file: /etc/passwd}",
          "{file: ../../nowhere.json}", "[[[[[[[[[[1]]]]]]]]]]", "!!python/object:os.system ls", "'\\ud800'",
          "{a: 1, a: 2}", "2024-01-01", "~", "- 1\n- 2"]
MUTATIONS_PER_FILE = 150


def mutate(text: str, rng: random.Random) -> bytes:
    lines = text.splitlines()
    for _ in range(rng.randint(1, 3)):
        if not lines:
            break
        i = rng.randrange(len(lines))
        kind = rng.randrange(7)
        if kind == 0:
            del lines[i]
        elif kind == 1:
            lines.insert(i, lines[i])  # a duplicate key, or a duplicated list item
        elif kind == 2:
            lines[i] = ("  " + lines[i]) if rng.random() < 0.5 else lines[i][2:]
        elif kind in (3, 4) and ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            lines[i] = f"{key}: {rng.choice(VALUES)}"
        elif kind == 5:
            cut = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:cut] + rng.choice(["\x1b[2J", "\x00", "\t", "{", "]", "&x", "*x", "'", '"'])
        else:
            lines = lines[: i + 1]
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    if rng.random() < 0.05:
        pos = rng.randrange(len(data) + 1)
        data = data[:pos] + bytes([0xff, 0xfe, 0xc3]) + data[pos:]
    return data


@pytest.mark.parametrize("example", EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_mutated_examples_never_crash_outside_the_error_types(example: Path, tmp_path: Path) -> None:
    work = tmp_path / "copy"
    shutil.copytree(example.parent, work, ignore=shutil.ignore_patterns("promotions", "*.db", "__pycache__"))
    target = work / "fuzzed.yaml"
    text = example.read_text(encoding="utf-8")
    rng = random.Random(f"{example.name}-11")
    crashes: list[str] = []
    loaded = refused = 0
    for n in range(MUTATIONS_PER_FILE):
        target.write_bytes(mutate(text, rng))
        try:
            load_workflow(target)
            loaded += 1
        except EngineError as e:
            refused += 1
            assert str(e).strip(), "an error without a message"
        except Exception as e:  # noqa: BLE001 - this is what the test looks for
            crashes.append(f"#{n} {type(e).__name__}: {str(e)[:200]}\n{target.read_bytes()[:2000]!r}")
    assert not crashes, f"{len(crashes)} crashes, first:\n{crashes[0]}"
    assert refused > MUTATIONS_PER_FILE // 4  # the mutations do break things


def test_fuzzed_validate_exits_0_or_2_never_internal(tmp_path: Path) -> None:
    example = EXAMPLES[0]
    work = tmp_path / "copy"
    shutil.copytree(example.parent, work, ignore=shutil.ignore_patterns("promotions", "*.db", "__pycache__"))
    rng = random.Random("cli-11")
    runner = CliRunner()
    for _ in range(40):
        target = work / "fuzzed.yaml"
        target.write_bytes(mutate(example.read_text(encoding="utf-8"), rng))
        result = runner.invoke(cli, ["validate", str(target)])
        assert result.exit_code in (0, 2), result.output
        assert "internal error" not in result.stderr and not re.search(r"\x1b\[", result.stderr)
