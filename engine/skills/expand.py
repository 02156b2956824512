"""Expanding `uses: name@version` steps into plain llm or script steps, before validation.

    - id: sentiment
      uses: classify@1            # name@version (a bare name takes the latest version)
      inputs: {text: "{{ inputs.review }}"}
      with:                       # overrides: the skill's params, and tier, max_tokens, retries,
        labels: [positive, negative]    # escalate, temperature for llm skills
        tier: standard

The skill's params are substituted at load time (`[[ ... ]]`), so the system prompt and schema
stay static; the rendered step is then validated like any other. A missing skill or version, an
unknown override and a missing or unknown input are load-time `SpecError`s naming what exists.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import jinja2

from engine.errors import SpecError
from engine.skills.library import SkillIndex, find_skills
from engine.skills.models import LLM_OVERRIDES, Skill
from engine.spec.models import FileRef
from engine.spec.positions import YAMLSyntaxError, parse_yaml, read_text
from engine.templating import budgeted_environment, render_budgeted

if TYPE_CHECKING:
    from engine.config import EngineConfig

AddProblem = Callable[[tuple[Any, ...], str], None]
FAN_OUT_KEYS = ("for_each", "as", "concurrency", "on_item_error")
STEP_KEYS = ("id", "uses", "with", "inputs", "when", *FAN_OUT_KEYS)
_REF = re.compile(r"^(?P<name>[a-z][a-z0-9_]*)(?:@(?P<version>\d+|latest))?$")
_WHOLE = re.compile(r"^\s*\[\[(?P<expr>.*?)\]\]\s*$", re.DOTALL)

PARAMS_ENV = budgeted_environment(
    variable_start_string="[[", variable_end_string="]]",
    block_start_string="[%", block_end_string="%]",
    comment_start_string="[#", comment_end_string="#]",
)
"""`[[ ]]` params: the render budget of workflow templates (engine.templating)."""
PARAMS_ENV.filters["json"] = lambda v: json.dumps(v, ensure_ascii=False)


USES_STEP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "UsesStep",
    "description": "A step that uses a skill from a library: `uses: name@version`.",
    "properties": {
        "id": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
        "uses": {"type": "string", "pattern": r"^[a-z][a-z0-9_]*(@(\d+|latest))?$",
                 "description": "skill name@version (a bare name takes the latest version)"},
        "inputs": {"type": "object", "description": "the skill's inputs: name -> template"},
        "with": {"type": "object", "description": "overrides: the skill's params; tier, max_tokens, "
                                                  "retries, escalate, temperature, quality for llm skills"},
        "when": {"type": ["string", "boolean"]},
        "for_each": {"type": "string", "description": "run the skill once per item of this list"},
        "as": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
        "concurrency": {"type": "integer", "minimum": 1, "maximum": 1024},
        "on_item_error": {"enum": ["fail", "skip", "collect"]},
    },
    "required": ["id", "uses"],
    "additionalProperties": False,
}
"""JSON Schema of a `uses:` step, merged into the workflow schema for editors."""


def parse_ref(ref: Any) -> tuple[str, int | None]:
    """'classify@2' -> ('classify', 2); 'classify' or 'classify@latest' -> ('classify', None)."""
    m = _REF.match(ref.strip()) if isinstance(ref, str) else None
    if not m:
        raise ValueError(f"'{ref}' must be 'name@version' (e.g. classify@1)")
    version = m.group("version")
    return m.group("name"), (None if version in (None, "latest") else int(version))


def substitute_params(value: Any, params: dict[str, Any]) -> Any:
    """Render `[[ ... ]]` in every string of `value`; a string that is one `[[ expr ]]` keeps
    the expression's type (a list stays a list)."""
    if isinstance(value, dict):
        return {k: substitute_params(v, params) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_params(v, params) for v in value]
    if not isinstance(value, str) or ("[[" not in value and "[%" not in value):
        return value
    context = {**params, "params": params}
    try:
        whole = _WHOLE.match(value)
        if whole and "[[" not in whole.group("expr"):
            return render_budgeted(PARAMS_ENV.compile_expression(whole.group("expr"), undefined_to_none=False),
                                   context)
        return render_budgeted(PARAMS_ENV.from_string(value), context)
    except jinja2.TemplateError as e:
        raise ValueError(f"params template {value[:60]!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a param of the wrong type (e.g. `join` over an int)
        raise ValueError(f"params template {value[:60]!r} failed: {type(e).__name__}: {e}") from None


def _read_ref(value: Any, base: Path) -> Any:
    """Inline `{file: x}` (relative to the skill's folder) so the workflow needs no path to it."""
    if isinstance(value, dict) and set(value) == {"file"}:
        value = FileRef(file=value["file"])
    if isinstance(value, FileRef):
        path = Path(value.file) if Path(value.file).is_absolute() else base / value.file
        try:  # a regular file within the size limit of workflow files, as the workflow loader reads
            text = read_text(path)
        except YAMLSyntaxError as e:
            raise ValueError(f"cannot read '{path}': {e.message}") from None
        text = text.replace("\r\n", "\n").replace("\r", "\n")  # newlines as a text-mode read gives them
        if path.suffix in (".json", ".yaml", ".yml"):
            try:
                return parse_yaml(text, str(path))[0]
            except YAMLSyntaxError as e:
                raise ValueError(str(e)) from None
        return text
    return value


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "null" if value is None else type(value).__name__


def _function_ref(ref: str, base: Path) -> str:
    target, _, attr = ref.rpartition(":")
    if target.endswith(".py") and not Path(target).is_absolute():
        return f"{base / target}:{attr}"
    return ref


def skill_step(skill: Skill, step_id: str, inputs: dict[str, Any], overrides: dict[str, Any],
               when: Any = None) -> dict[str, Any]:
    """The plain step a `uses:` step stands for. Raises ValueError naming what is wrong."""
    unknown = sorted(set(overrides) - set(skill.overridable()))
    if unknown:
        raise ValueError(f"{skill.ref} has no parameter {', '.join(repr(u) for u in unknown)} "
                         f"(overridable: {', '.join(skill.overridable()) or 'none'})")
    missing = [n for n, s in skill.inputs.items() if n not in inputs and "default" not in s]
    extra = sorted(set(inputs) - set(skill.inputs))
    if missing or extra:
        parts = ([f"missing input(s) {', '.join(missing)}"] if missing else []) + (
            [f"unknown input(s) {', '.join(extra)}"] if extra else [])
        raise ValueError(f"{skill.ref}: {'; '.join(parts)} (inputs: {', '.join(skill.inputs) or 'none'})")
    for name, value in overrides.items():
        if name in skill.params and _kind(value) != _kind(skill.params[name]) and skill.params[name] is not None:
            raise ValueError(f"{skill.ref}: parameter '{name}' must be {_kind(skill.params[name])} "
                             f"(like its default), not {_kind(value)}")
    step_inputs = {n: inputs[n] if n in inputs else s["default"] for n, s in skill.inputs.items()}
    params = {**copy.deepcopy(skill.params), **{k: v for k, v in overrides.items() if k in skill.params}}
    step: dict[str, Any] = {"id": step_id, "inputs": step_inputs}
    if when is not None:
        step["when"] = when
    base = skill.base_dir
    try:
        if skill.llm is not None:
            llm = skill.llm.model_dump(by_alias=True, exclude_none=True)
            for key in ("system", "prompt", "schema"):
                if key in llm:
                    llm[key] = _read_ref(llm[key], base)
            llm = substitute_params(llm, params)
            llm.update({k: v for k, v in overrides.items() if k in LLM_OVERRIDES})
            step["llm"] = llm
        else:
            assert skill.script is not None
            script: dict[str, Any] = {"function": _function_ref(skill.script.function, base)}
            if skill.script.output is not None:
                script["schema"] = substitute_params(_read_ref(skill.script.output, base), params)
            step["script"] = script
            step["inputs"].update(params)  # params reach the function as keyword arguments
    except OSError as e:
        raise ValueError(f"{skill.ref}: cannot read {e.filename}: {e.strerror}") from None
    except ValueError as e:
        raise ValueError(f"{skill.ref}: {e}") from None
    return step


def expand_uses(data: dict[str, Any], base_dir: Path, add: AddProblem,
                config: EngineConfig | None = None, index: SkillIndex | None = None) -> dict[str, Any]:
    """A copy of the workflow data with every `uses:` step replaced by the step it stands for."""
    steps = data.get("steps")
    if not isinstance(steps, list) or not any(isinstance(s, dict) and "uses" in s for s in steps):
        return data
    if index is None:
        from engine.config import load_config

        index = find_skills(base_dir, config or load_config(base_dir))
    out = dict(data)
    out["steps"] = list(steps)
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or "uses" not in step:
            continue
        where = ("steps", i)
        odd = [k for k in step if k not in STEP_KEYS]
        if odd:
            add(where + (odd[0],), f"a 'uses:' step takes only {', '.join(STEP_KEYS)} (found '{odd[0]}')")
            continue
        try:
            name, version = parse_ref(step["uses"])
            skill = index.load(name, version)
        except (ValueError, LookupError) as e:
            add(where + ("uses",), str(e))
            continue
        except SpecError as e:
            add(where + ("uses",), f"skill '{step['uses']}' fails to load: {e}")
            continue
        overrides = step.get("with") or {}
        inputs = step.get("inputs") or {}
        if not isinstance(overrides, dict) or not isinstance(inputs, dict):
            add(where + ("with" if not isinstance(overrides, dict) else "inputs",), "must be a mapping")
            continue
        try:
            out["steps"][i] = skill_step(skill, str(step.get("id", "")), inputs, overrides, step.get("when"))
            out["steps"][i].update({k: step[k] for k in FAN_OUT_KEYS if k in step})
        except ValueError as e:
            key = "with" if "parameter" in str(e) else "inputs" if "input" in str(e) else "uses"
            add(where + (key if key in step else "uses",), str(e))
    return out
