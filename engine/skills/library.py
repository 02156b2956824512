"""Where skills come from, and finding one by name and version.

A library is a directory laid out as `<group>/<name>/v<N>.yaml` (groups are for readers: any
depth of folders works; the skill's name is its folder, its version the file name). Libraries are
searched in this order, the first holding a given `name@version` winning:

  1. the project's `skills/`: the nearest `skills/` folder at or above the workflow, then the
     working directory's;
  2. paths listed under `skills:` in engine.yaml, then in `$ENGINE_SKILLS_PATH` (os.pathsep-separated);
  3. installed libraries: entry points in the group `engine.skills`, each naming a package (its
     folder is the library), a path, or a callable returning a path.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from engine.errors import ConfigError, SpecError
from engine.skills.models import Skill
from engine.spec.positions import PositionMap, YAMLSyntaxError, field_path, parse_yaml, read_text

if TYPE_CHECKING:
    from engine.config import EngineConfig

ENTRY_POINT_GROUP = "engine.skills"
_VERSION_FILE = re.compile(r"^v(\d+)\.ya?ml$")


@dataclass(frozen=True)
class LibraryRoot:
    label: str
    """project | config | env | entry point NAME"""
    path: Path


@dataclass
class SkillEntry:
    name: str
    version: int
    path: Path
    library: LibraryRoot


@dataclass
class SkillIndex:
    """Every skill file found, by name then version (shadowed duplicates kept apart)."""

    roots: list[LibraryRoot]
    entries: dict[str, dict[int, SkillEntry]] = field(default_factory=dict)
    shadowed: list[SkillEntry] = field(default_factory=list)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def versions(self, name: str) -> list[int]:
        return sorted(self.entries.get(name, {}))

    def describe(self) -> str:
        """'classify@1,2, normalize_text@1, ...' for error messages."""
        if not self.entries:
            where = ", ".join(str(r.path) for r in self.roots) or "no library found"
            return f"none ({where})"
        return ", ".join(f"{n}@{','.join(str(v) for v in self.versions(n))}" for n in self.names())

    def entry(self, name: str, version: int | None = None) -> SkillEntry:
        """The entry for `name@version` (latest when version is None); SpecError naming what exists."""
        versions = self.entries.get(name)
        if not versions:
            raise LookupError(f"unknown skill '{name}' (skills: {self.describe()})")
        if version is None:
            return versions[max(versions)]
        if version not in versions:
            have = ", ".join(f"{name}@{v}" for v in sorted(versions))
            raise LookupError(f"skill '{name}' has no version {version} (versions: {have})")
        return versions[version]

    def load(self, name: str, version: int | None = None) -> Skill:
        return load_skill(self.entry(name, version))

    def all(self) -> list[SkillEntry]:
        return [self.entries[n][v] for n in self.names() for v in self.versions(n)]


def _entry_point_roots() -> list[LibraryRoot]:
    roots: list[LibraryRoot] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            target: Any = ep.load()
            if callable(target) and not isinstance(target, ModuleType):
                target = target()
            if isinstance(target, ModuleType):
                target = Path(target.__file__ or "").parent
        except Exception as e:  # noqa: BLE001 - a broken plugin is named, not fatal
            raise ConfigError(f"skill library entry point '{ep.name}' failed to load: {e}") from e
        roots.append(LibraryRoot(f"entry point {ep.name}", Path(target)))
    return roots


def library_roots(base_dir: Path | None = None, config: EngineConfig | None = None) -> list[LibraryRoot]:
    """Every library, in search order (see the module docstring)."""
    roots: list[LibraryRoot] = []
    starts = [p for p in (base_dir, Path.cwd()) if p is not None]
    for start in starts:
        for parent in [start.resolve(), *start.resolve().parents]:
            if (parent / "skills").is_dir():
                roots.append(LibraryRoot("project", parent / "skills"))
                break
    for p in (config.skills if config is not None else []):
        roots.append(LibraryRoot("config", Path(p)))
    for p in filter(None, os.environ.get("ENGINE_SKILLS_PATH", "").split(os.pathsep)):
        roots.append(LibraryRoot("env", Path(p)))
    roots.extend(_entry_point_roots())
    unique: list[LibraryRoot] = []
    seen: set[Path] = set()
    for root in roots:
        resolved = root.path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            unique.append(LibraryRoot(root.label, resolved))
    return unique


def scan(roots: list[LibraryRoot]) -> SkillIndex:
    """Index the skill files under each root by layout (files are parsed only when used)."""
    index = SkillIndex(roots)
    for root in roots:
        if not root.path.is_dir():
            continue
        for path in sorted(root.path.rglob("v*.y*ml")):
            m = _VERSION_FILE.match(path.name)
            if not m or any(part.startswith(".") for part in path.relative_to(root.path).parts):
                continue
            entry = SkillEntry(path.parent.name, int(m.group(1)), path, root)
            versions = index.entries.setdefault(entry.name, {})
            if entry.version in versions:
                index.shadowed.append(entry)
            else:
                versions[entry.version] = entry
    return index


def find_skills(base_dir: Path | None = None, config: EngineConfig | None = None) -> SkillIndex:
    return scan(library_roots(base_dir, config))


_cache: dict[Path, tuple[int, Skill]] = {}
_cache_lock = threading.Lock()


def load_skill(entry: SkillEntry) -> Skill:
    """Parse and validate one skill file (cached by modification time)."""
    try:
        mtime = entry.path.stat().st_mtime_ns
    except OSError as e:  # a link to nowhere, a file gone since the scan
        raise SpecError([(f"{entry.path}:1:1", "", f"cannot read the skill file: {e.strerror or e}")]) from None
    with _cache_lock:
        hit = _cache.get(entry.path)
        if hit is not None and hit[0] == mtime:
            return hit[1]
    skill = _parse(entry)
    with _cache_lock:
        _cache[entry.path] = (mtime, skill)
    return skill


def _parse(entry: SkillEntry) -> Skill:
    filename = str(entry.path)
    try:
        data, positions = parse_yaml(read_text(entry.path), filename)
    except YAMLSyntaxError as e:
        raise SpecError([(e.location, "", e.message)]) from None
    except OSError as e:
        raise SpecError([(f"{filename}:1:1", "", f"cannot read the skill file: {e.strerror or e}")]) from None
    if not isinstance(data, dict):
        raise SpecError([(f"{filename}:1:1", "", "a skill file must be a mapping")])
    try:
        skill = Skill.model_validate(data)
    except ValidationError as e:
        from engine.spec.positions import pydantic_problems

        raise SpecError([(positions.locate(loc), field_path(loc, data), msg)
                         for loc, msg in pydantic_problems(e, data)]) from None
    problems: list[tuple[str, str, str]] = []
    if skill.name != entry.name:
        problems.append(_at(positions, ("name",), data, f"'{skill.name}' must match its folder '{entry.name}'"))
    if skill.version != entry.version:
        problems.append(_at(positions, ("version",), data,
                            f"{skill.version} must match its file name '{entry.path.name}'"))
    if problems:
        raise SpecError(problems)
    skill._path = entry.path
    skill._library = entry.library.label
    return skill


def _at(positions: PositionMap, path: tuple[Any, ...], data: Any, msg: str) -> tuple[str, str, str]:
    return positions.locate(path), field_path(path, data), msg
