"""Load a workflow file into `Workflow`, collecting every problem with file:line:column and field.

`load_workflow(path)` parses YAML, validates the models (unknown keys forbidden), resolves files
(prompts, schemas, tables, script callables, sub-workflows) relative to the workflow, and checks
references: unknown step references, steps reading each other in a cycle, unknown inputs and
variables, duplicate ids, unknown tiers, invalid JSON Schemas, template syntax errors, prompts
that read variables the step does not declare, `for_each` and `context:` settings, sub-workflows
that fail to load, recurse or get the wrong inputs.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import io
import json
import sys
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import yaml
from pydantic import BaseModel, ValidationError

from engine.errors import SpecError
from engine.spec.quality import CompareSpec
from engine.spec.models import DecisionSpec, FileRef, LLMSpec, MissLLM, Step, Workflow
from engine.spec.positions import (MAX_FILE_BYTES, PositionMap, YAMLSyntaxError, field_path, parse_yaml,
                                   pydantic_problems, read_text)
from engine.templating import TemplateError, check_syntax, free_variables, references

if TYPE_CHECKING:
    from engine.config import EngineConfig


class _Problems:
    def __init__(self, positions: PositionMap, data: Any):
        self.positions = positions
        self.data = data
        self.items: list[tuple[str, str, str]] = []

    def add(self, path: tuple[Any, ...], message: str) -> None:
        self.items.append((self.positions.locate(path), field_path(path, self.data), message))

    def raise_if_any(self) -> None:
        if self.items:
            raise SpecError(self.items)


def load_workflow(
    source: str | Path | dict[str, Any] | Workflow, *, config: EngineConfig | None = None
) -> Workflow:
    """Load a workflow from a path, a dict, or pass a loaded one through."""
    if isinstance(source, Workflow):
        return source
    if isinstance(source, dict):
        return _build(source, PositionMap("<dict>"), Path.cwd(), config, None)
    path = Path(source)
    if not path.is_file():
        what = "not a regular file (devices, pipes and sockets are not read)" if path.exists() and not path.is_dir() \
            else "no such workflow file"
        raise SpecError([(str(path), "", what)])
    try:
        text = read_text(path)
    except YAMLSyntaxError as e:
        raise SpecError([(e.location, "", e.message)]) from None
    except OSError as e:
        raise SpecError([(str(path), "", f"cannot read the file: {e.strerror or e}")]) from None
    return load_workflow_text(text, filename=str(path), base_dir=path.parent, config=config, path=path)


def load_workflow_text(
    text: str, *, filename: str = "<string>", base_dir: Path | None = None,
    config: EngineConfig | None = None, path: Path | None = None,
) -> Workflow:
    try:
        data, positions = parse_yaml(text, filename)
    except YAMLSyntaxError as e:
        raise SpecError([(e.location, "", e.message)]) from None
    return _build(data, positions, base_dir or Path.cwd(), config, path)


def _build(data: Any, positions: PositionMap, base_dir: Path, config: EngineConfig | None,
           path: Path | None) -> Workflow:
    if path is None:
        return _build_checked(data, positions, base_dir, config, path)
    token = _LOADING.set((*_LOADING.get(), path.resolve()))
    try:
        return _build_checked(data, positions, base_dir, config, path)
    finally:
        _LOADING.reset(token)


def _build_checked(data: Any, positions: PositionMap, base_dir: Path, config: EngineConfig | None,
                   path: Path | None) -> Workflow:
    problems = _Problems(positions, data)
    if not isinstance(data, dict):
        problems.add((), "a workflow must be a mapping with name, steps, ...")
        problems.raise_if_any()
    from engine.skills.expand import expand_uses  # `uses: skill@version` steps (engine.skills)

    data = problems.data = expand_uses(data, base_dir, problems.add, config)
    problems.raise_if_any()
    try:
        workflow = Workflow.model_validate(data)
    except ValidationError as e:
        for loc, msg in pydantic_problems(e, data):
            problems.add(loc, msg)
        problems.raise_if_any()
        raise  # pragma: no cover
    from engine.config import load_config  # engine.config imports the spec models

    config = (config or load_config(base_dir)).with_tiers(workflow.tiers)
    workflow._path = path
    workflow._base_dir = base_dir
    workflow._config = config
    from engine.providers.registry import known_providers

    for tier, chain in workflow.tiers.items():
        for i, entry in enumerate(chain):
            if entry.provider not in known_providers():
                problems.add(("tiers", tier, i, "model"), f"unknown provider '{entry.provider}' "
                                                          f"(known: {', '.join(sorted(known_providers()))})")
            elif entry.batch and not _has_batch_api(entry.provider):
                problems.add(("tiers", tier, i, "batch"), f"provider '{entry.provider}' has no batch API "
                                                          "(batch: true works with openai and anthropic)")
    _check(workflow, data, problems, config, base_dir)
    problems.raise_if_any()
    return workflow


# --- semantic checks and resolution -------------------------------------------------------------


def _check(workflow: Workflow, data: dict[str, Any], problems: _Problems, config: EngineConfig,
           base_dir: Path) -> None:
    for name, schema in workflow.inputs.items():
        _check_schema(schema, ("inputs", name), problems)
    seen: dict[str, int] = {}
    for i, step in enumerate(workflow.steps):
        if step.id in seen:
            problems.add(("steps", i, "id"), f"duplicate step id '{step.id}' (first used by steps[{seen[step.id]}])")
        seen.setdefault(step.id, i)
    for i, step in enumerate(workflow.steps):
        where = ("steps", i)
        item = step.item_name if step.for_each is not None else None
        _check_refs(step.inputs, where + ("inputs",), workflow, problems, item=item)
        if step.when is not None:
            _check_refs(step.when, where + ("when",), workflow, problems, condition=True)
        if step.for_each is not None:
            _check_refs(step.for_each, where + ("for_each",), workflow, problems)
            if step.item_name in ("inputs", "steps"):
                problems.add(where + ("as",), f"'{step.item_name}' is taken: name the item something else")
        if step.script is not None:
            _resolve_script(step, where + ("script",), base_dir, problems)
        elif step.decision is not None:
            _resolve_decision(step, step.decision, where + ("decision",), base_dir, config, problems)
        elif step.llm is not None:
            _resolve_llm(step, step.llm, where + ("llm",), base_dir, config, problems)
            if step.llm.context is not None:
                _resolve_context(step, step.llm, where + ("llm", "context"), base_dir, config, problems)
        elif step.workflow is not None:
            _resolve_subworkflow(step, where + ("workflow",), base_dir, config, problems)
    for name, template in workflow.outputs.items():
        _check_refs(template, ("outputs", name), workflow, problems)
    _check_child_outputs(workflow, problems)
    from engine.spec.graph import dependencies, find_cycle

    cycle = find_cycle(dependencies(workflow.steps), workflow.step_ids)
    if cycle is not None:
        first = workflow.steps[seen[cycle[0]]]
        field = next((f for f, t, c in (("inputs", first.inputs, False), ("for_each", first.for_each, False),
                                        ("when", first.when, True))
                      if t is not None and _reads_step(t, cycle[1], c)), "id")
        problems.add(("steps", seen[cycle[0]], field),
                     f"steps form a cycle: {' -> '.join(cycle)} (each reads the next's output)")


def _check_child_outputs(workflow: Workflow, problems: _Problems) -> None:
    """`steps.<sub>.output.<name>` must name an output of the sub-workflow (once it is loaded)."""
    children = {s.id: s._workflow for s in workflow.steps if s._workflow is not None and s.for_each is None}
    if not children:
        return
    places: list[tuple[Any, tuple[Any, ...], bool]] = []
    for i, step in enumerate(workflow.steps):
        places += [(step.inputs, ("steps", i, "inputs"), False), (step.for_each, ("steps", i, "for_each"), False),
                   (step.when, ("steps", i, "when"), True)]
    places += [(t, ("outputs", name), False) for name, t in workflow.outputs.items()]
    for template, path, condition in places:
        if template is None:
            continue
        try:
            refs = references(template, condition=condition)
        except TemplateError:
            continue  # reported already
        for ref in refs:
            if len(ref.path) > 3 and ref.path[0] == "steps" and ref.path[2] == "output" and ref.path[1] in children:
                child = children[ref.path[1]]
                names = list(child.outputs) or [child.steps[-1].id]
                if ref.path[3] not in names:
                    problems.add(path, f"sub-workflow '{child.name}' has no output '{ref.path[3]}' "
                                       f"(outputs: {', '.join(names)})")


def _reads_step(template: Any, step_id: str, condition: bool) -> bool:
    try:
        return any(r.path[:2] == ("steps", step_id) for r in references(template, condition=condition))
    except TemplateError:
        return False


_JINJA_GLOBALS = {"range", "dict", "lipsum", "cycler", "joiner", "namespace", "loop", "true", "false", "none",
                  "True", "False", "None"}


def _check_refs(template: Any, path: tuple[Any, ...], workflow: Workflow, problems: _Problems,
                condition: bool = False, item: str | None = None) -> None:
    try:
        refs = references(template, condition=condition)
    except TemplateError as e:
        problems.add(path, str(e))
        return
    reported: set[str] = set()
    for ref in refs:
        head = ref.path[0]
        if head == "inputs":
            if len(ref.path) < 2:
                continue
            if ref.path[1] not in workflow.inputs:
                known = ", ".join(workflow.inputs) or "none"
                problems.add(path, f"unknown input 'inputs.{ref.path[1]}' (declared: {known})")
        elif head == "steps":
            if len(ref.path) < 2:
                continue
            target = ref.path[1]
            if target not in workflow.step_ids:
                problems.add(path, f"unknown step 'steps.{target}' (steps: {', '.join(workflow.step_ids)})")
            elif len(ref.path) > 2 and ref.path[2] not in ("output", "errors"):
                problems.add(path, f"'steps.{target}.{ref.path[2]}': a step exposes only '.output' "
                                   "(and '.errors' with for_each)")
            elif len(ref.path) > 2 and ref.path[2] == "errors" and workflow.step(target).for_each is None:
                problems.add(path, f"'steps.{target}.errors': only a for_each step has errors")
        elif head == item or head in _JINJA_GLOBALS or head in reported or condition:
            continue
        elif head == "item" or not isinstance(template, (str, dict, list)) or _reads_free(template, head):
            reported.add(head)
            hint = f", {item}" if item else (" (item: the step has no for_each)" if head == "item" else "")
            problems.add(path, f"unknown variable '{head}' (templates read inputs.*, steps.*{hint})")


def _reads_free(template: Any, name: str) -> bool:
    """Whether `name` is a free variable of the template (not one it assigns, e.g. a loop variable)."""
    if isinstance(template, dict):
        return any(_reads_free(v, name) for v in template.values())
    if isinstance(template, list):
        return any(_reads_free(v, name) for v in template)
    if not isinstance(template, str):
        return False
    try:
        return name in free_variables(template)
    except TemplateError:
        return False


_LOADING: ContextVar[tuple[Path, ...]] = ContextVar("engine_loading_workflows", default=())
"""The workflow files being loaded, outermost first: a sub-workflow found here is recursion."""

MAX_SUBWORKFLOW_DEPTH = 32
"""The most workflow files in one chain of sub-workflows (the top one included): deeper nesting
is refused at load, with the chain, before it can exhaust the stack."""


class _TooDeep(SpecError):
    """Sub-workflows nest too deep: passed up unwrapped, and reported once, by the outermost
    workflow at its sub-workflow step, with the whole chain."""

    def __init__(self, message: str):
        super().__init__([("", "", message)])
        self.message = message


def _resolve_subworkflow(step: Step, path: tuple[Any, ...], base_dir: Path, config: EngineConfig,
                         problems: _Problems) -> None:
    assert step.workflow is not None
    file = Path(step.workflow) if Path(step.workflow).is_absolute() else base_dir / step.workflow
    if not file.is_file():
        problems.add(path, f"no sub-workflow file '{file}'")
        return
    chain = _LOADING.get()
    resolved = file.resolve()
    if resolved in chain:
        loop = [p.name for p in chain[chain.index(resolved):]] + [resolved.name]
        problems.add(path, f"recursive sub-workflow: {' -> '.join(loop)}")
        return
    try:
        if len(chain) >= MAX_SUBWORKFLOW_DEPTH:
            names = [p.name for p in chain] + [resolved.name]
            shown = names if len(names) <= 7 else [*names[:3], f"... ({len(names) - 6} more)", *names[-3:]]
            raise _TooDeep(f"sub-workflows nest more than {MAX_SUBWORKFLOW_DEPTH} workflows deep: "
                           f"{' -> '.join(shown)}")
        child = load_workflow(file, config=config)
    except _TooDeep as e:
        if len(chain) > 1:  # not the outermost workflow file: pass it up
            raise
        problems.add(path, e.message)
        return
    except SpecError as e:
        problems.add(path, f"sub-workflow '{step.workflow}' fails to load:\n{e}")
        return
    step._workflow = child
    missing = [n for n, s in child.inputs.items() if n not in step.inputs and "default" not in s]
    extra = sorted(set(step.inputs) - set(child.inputs))
    if missing or extra:
        parts = ([f"missing input(s) {', '.join(missing)}"] if missing else []) + (
            [f"unknown input(s) {', '.join(extra)}"] if extra else [])
        problems.add(path, f"sub-workflow '{child.name}': {'; '.join(parts)} "
                           f"(inputs: {', '.join(child.inputs) or 'none'})")


def _check_schema(schema: Any, path: tuple[Any, ...], problems: _Problems, echo: bool = True) -> bool:
    """`echo=False` for a schema read from a file: the message names the rule broken, not the
    content (a `file:` may point anywhere, and errors must not print a foreign file)."""
    if not isinstance(schema, dict):
        problems.add(path, "a JSON Schema must be a mapping")
        return False
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        where = ".".join(str(p) for p in e.absolute_path)
        detail = e.message if echo else f"fails the metaschema's '{e.validator}' rule"
        problems.add(path, f"invalid JSON Schema{' at ' + where if where else ''}: {detail}")
        return False
    except RecursionError:
        problems.add(path, "the JSON Schema nests too deeply")
        return False
    return True


MAX_TABLE_BYTES = 200_000_000
"""The largest decision table file (CSV or JSON; a YAML table is held to the YAML limits too)."""


def _read_file(ref: FileRef, base_dir: Path, path: tuple[Any, ...], problems: _Problems,
               max_bytes: int = MAX_FILE_BYTES) -> str | None:
    file = (base_dir / ref.file) if not Path(ref.file).is_absolute() else Path(ref.file)
    try:
        return read_text(file, max_bytes=max_bytes)
    except YAMLSyntaxError as e:
        problems.add(path + ("file",), f"cannot read '{file}': {e.message}")
    except OSError as e:
        problems.add(path + ("file",), f"cannot read '{file}': {e.strerror or e}")
    return None


def _load_data_file(text: str, name: str) -> Any:
    """JSON or YAML data. Errors say where, never what the file holds (it may be any file)."""
    if name.endswith(".json"):
        try:
            return json.loads(text, parse_constant=_no_constant)
        except RecursionError:
            raise ValueError("nesting too deep") from None
    try:
        return parse_yaml(text, name)[0]
    except YAMLSyntaxError as e:
        raise ValueError(f"{e.location}: {e.message}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_tier(tier: str, path: tuple[Any, ...], config: EngineConfig, problems: _Problems) -> None:
    if tier not in config.tiers:
        problems.add(path, f"unknown tier '{tier}' (known: {', '.join(sorted(config.tiers))})")


def _check_quality(spec: LLMSpec, path: tuple[Any, ...], config: EngineConfig, problems: _Problems) -> None:
    """The step's `quality:` tiers, and engine.yaml's (named at the step, since the step uses them)."""
    own = spec.quality
    if own is not None:
        if own.reference is not None:
            _check_tier(own.reference, path + ("quality", "reference"), config, problems)
        if isinstance(own.compare, CompareSpec) and own.compare.judge is not None:
            _check_tier(own.compare.judge, path + ("quality", "compare", "judge"), config, problems)
    base = config.quality
    if base is None:
        return
    sources = f" (quality: in {', '.join(config.sources)})" if config.sources else ""
    if base.reference is not None and (own is None or own.reference is None) and base.reference not in config.tiers:
        problems.add(path, f"quality.reference '{base.reference}'{sources} is not a tier "
                           f"(known: {', '.join(sorted(config.tiers))})")
    if isinstance(base.compare, CompareSpec) and base.compare.judge is not None and (
            base.compare.judge not in config.tiers):
        problems.add(path, f"quality.compare.judge '{base.compare.judge}'{sources} is not a tier")


def _resolve_llm(step: Step, spec: LLMSpec, path: tuple[Any, ...], base_dir: Path, config: EngineConfig,
                 problems: _Problems) -> None:
    if spec.tier == "auto":
        if spec.escalate:
            problems.add(path + ("escalate",), "tier: auto asks every tier, cheapest first; drop escalate")
    else:
        _check_tier(spec.tier, path + ("tier",), config, problems)
    for i, tier in enumerate(spec.escalate):
        _check_tier(tier, path + ("escalate", i), config, problems)
    _check_quality(spec, path, config, problems)
    for field in ("system", "prompt"):
        value = getattr(spec, field)
        if isinstance(value, FileRef):
            text = _read_file(value, base_dir, path + (field,), problems)
            if text is None:
                continue
            setattr(spec, field, text)
            value = text
        if value is None:
            continue
        try:
            check_syntax(value)
            names = free_variables(value)
        except TemplateError as e:
            problems.add(path + (field,), str(e))
            continue
        allowed = set(step.inputs) if field == "prompt" else set()
        unknown = sorted(names - allowed)
        if unknown:
            what = "the static system prompt cannot use variables" if field == "system" else (
                f"declared step inputs: {', '.join(step.inputs) or 'none'}")
            problems.add(path + (field,), f"uses undeclared variable(s) {', '.join(unknown)} ({what})")
    schema = spec.schema_
    if isinstance(schema, FileRef):
        text = _read_file(schema, base_dir, path + ("schema",), problems)
        if text is None:
            return
        try:
            schema = _load_data_file(text, schema.file)
        except ValueError as e:
            problems.add(path + ("schema",), f"cannot parse schema file: {e}")
            return
        if not _check_schema(schema, path + ("schema",), problems, echo=False):
            return
    if isinstance(schema, str):
        model = _import_attr(schema, base_dir, path + ("schema",), problems)
        if model is None:
            return
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            problems.add(path + ("schema",), f"'{schema}' is not a pydantic model")
            return
        spec._pydantic_model = model
        schema = model.model_json_schema()
    if isinstance(schema, dict) and _has_templates(schema):
        # A schema may depend on the step's inputs (e.g. `enum: "{{ labels }}"`); it is rendered
        # and checked on every call instead.
        try:
            used = {v for ref in references(schema) for v in ref.path[:1]}
        except TemplateError as e:
            problems.add(path + ("schema",), str(e))
            return
        unknown = sorted(used - set(step.inputs))
        if unknown:
            problems.add(path + ("schema",), f"uses undeclared variable(s) {', '.join(unknown)}")
            return
        spec.schema_ = schema
        spec._templated_schema = True
    elif _check_schema(schema, path + ("schema",), problems):
        spec.schema_ = schema


def _resolve_context(step: Step, spec: LLMSpec, path: tuple[Any, ...], base_dir: Path, config: EngineConfig,
                     problems: _Problems) -> None:
    """`context:` names one of the step's inputs; its `reduce:` becomes an LLMSpec of its own, over
    the step's inputs and `results`, defaulting to the step's system, schema and token cap."""
    context = spec.context
    assert context is not None
    if context.input is None:
        if len(step.inputs) == 1:
            context.input = next(iter(step.inputs))
        else:
            problems.add(path, f"name the input to {context.strategy or 'compress'} with `input:` (step inputs: "
                               f"{', '.join(step.inputs) or 'none'})")
    elif context.input not in step.inputs:
        problems.add(path + ("input",), f"unknown step input '{context.input}' (declared: "
                                        f"{', '.join(step.inputs) or 'none'})")
    if context.compress is not None:
        _resolve_compress(step, context, path + ("compress",), config, problems)
    reduce = context.reduce
    if reduce is None:
        return
    if context.strategy != "chunk":
        problems.add(path + ("reduce",), "reduce only applies with strategy: chunk")
        return
    if "results" in step.inputs:
        problems.add(path + ("reduce",), "the step input 'results' would hide the chunk results: rename it")
        return
    reduce_spec = LLMSpec.model_validate({
        "tier": spec.tier, "system": reduce.system if reduce.system is not None else spec.system,
        "prompt": reduce.prompt, "schema": reduce.schema_ if reduce.schema_ is not None else spec.schema_,
        "max_tokens": reduce.max_tokens or spec.max_tokens, "temperature": spec.temperature,
        "retries": spec.retries, "escalate": list(spec.escalate), "quality": spec.quality,
        "promote": {"enabled": False}})
    if reduce.schema_ is None:
        reduce_spec._pydantic_model = spec._pydantic_model
    # the chunked input itself is too long for the reduce prompt: it reads the others and `results`
    shadow = Step.model_construct(id=step.id, inputs={**{k: v for k, v in step.inputs.items() if k != context.input},
                                                      "results": None})
    _resolve_llm(shadow, reduce_spec, path + ("reduce",), base_dir, config, problems)
    spec._reduce = reduce_spec


def _resolve_compress(step: Step, context: Any, path: tuple[Any, ...], config: EngineConfig,
                      problems: _Problems) -> None:
    """`compress.query` reads only the other step inputs; `mode: tokens` needs a llama.cpp model
    (`scorer:`, or the first tier that has one)."""
    compress = context.compress
    if compress.query is not None:
        try:
            check_syntax(compress.query)
            unknown = sorted(free_variables(compress.query) - (set(step.inputs) - {context.input}))
        except TemplateError as e:
            problems.add(path + ("query",), str(e))
            unknown = []
        if unknown:
            problems.add(path + ("query",), f"uses variable(s) {', '.join(unknown)}: the query reads the other "
                                            f"step inputs (not the compressed '{context.input}')")
    if compress.mode != "tokens":
        return
    if compress.scorer is not None:
        chain = config.tiers.get(compress.scorer)
        if chain is None:
            problems.add(path + ("scorer",), f"unknown tier '{compress.scorer}' (tiers: {', '.join(config.tiers)})")
        elif not any(e.provider == "llamacpp" for e in chain):
            problems.add(path + ("scorer",), f"tier '{compress.scorer}' has no llamacpp model to score tokens with")
    elif not any(e.provider == "llamacpp" for chain in config.tiers.values() for e in chain):
        problems.add(path + ("mode",), "mode: tokens scores tokens with a llamacpp model, and no tier has one "
                                       "(add one, e.g. llamacpp:smollm2, or use mode: extractive)")


def _has_templates(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict):
        return any(_has_templates(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_templates(v) for v in value)
    return False


def _resolve_decision(step: Step, spec: DecisionSpec, path: tuple[Any, ...], base_dir: Path,
                      config: EngineConfig, problems: _Problems) -> None:
    try:
        check_syntax(spec.key)
        unknown = sorted(free_variables(spec.key) - set(step.inputs))
    except TemplateError as e:
        problems.add(path + ("key",), str(e))
        unknown = []
    if unknown:
        problems.add(path + ("key",), f"uses undeclared variable(s) {', '.join(unknown)} "
                                      f"(declared step inputs: {', '.join(step.inputs) or 'none'})")
    table = spec.table
    if isinstance(table, (str, FileRef)):
        ref = table if isinstance(table, FileRef) else FileRef(file=table)
        text = _read_file(ref, base_dir, path + ("table",), problems, max_bytes=MAX_TABLE_BYTES)
        if text is None:
            return
        try:
            table = _parse_table(text, ref.file, spec)
        except (ValueError, KeyError, yaml.YAMLError, csv.Error) as e:
            problems.add(path + ("table",), f"cannot read table '{ref.file}': {e}")
            return
    if not isinstance(table, dict):
        problems.add(path + ("table",), "a decision table must be a mapping of key -> value")
        return
    spec.table = table
    if isinstance(spec.on_miss, MissLLM):
        _resolve_llm(step, spec.on_miss.llm, path + ("on_miss", "llm"), base_dir, config, problems)


def _parse_table(text: str, name: str, spec: DecisionSpec) -> dict[str, Any]:
    if name.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows:
            return {}
        columns = list(rows[0].keys())
        key_col = spec.key_column or columns[0]
        if key_col not in columns:
            raise KeyError(f"no column '{key_col}' (columns: {', '.join(columns)})")
        if spec.value_column:
            if spec.value_column not in columns:
                raise KeyError(f"no column '{spec.value_column}' (columns: {', '.join(columns)})")
            return {r[key_col]: r[spec.value_column] for r in rows}
        rest = [c for c in columns if c != key_col]
        if len(rest) == 1:
            return {r[key_col]: r[rest[0]] for r in rows}
        return {r[key_col]: {c: r[c] for c in rest} for r in rows}
    data = _load_data_file(text, name)
    if not isinstance(data, dict):
        raise ValueError("the file must hold a mapping of key -> value")
    return {str(k): v for k, v in data.items()}


def _resolve_script(step: Step, path: tuple[Any, ...], base_dir: Path, problems: _Problems) -> None:
    spec = step.script
    assert spec is not None
    fn = _import_attr(spec.function, base_dir, path + ("function",), problems)
    if fn is None:
        return
    if not callable(fn):
        problems.add(path + ("function",), f"'{spec.function}' is not callable")
        return
    spec._callable = fn
    if isinstance(spec.schema_, FileRef):
        text = _read_file(spec.schema_, base_dir, path + ("schema",), problems)
        if text is None:
            return
        try:
            spec.schema_ = _load_data_file(text, spec.schema_.file)
        except ValueError as e:
            problems.add(path + ("schema",), f"cannot parse schema file: {e}")
            return
    if spec.schema_ is not None:
        _check_schema(spec.schema_, path + ("schema",), problems)


def _skill_dirs(base_dir: Path) -> list[Path]:
    dirs = [base_dir]
    for parent in [base_dir, *base_dir.resolve().parents, Path.cwd()]:
        candidate = parent / "skills"
        if candidate.is_dir() and candidate not in dirs:
            dirs.append(candidate)
    return dirs


def _import_attr(ref: str, base_dir: Path, path: tuple[Any, ...], problems: _Problems) -> Any:
    """Resolve 'module:attr' or 'file.py:attr' (beside the workflow, then in skills/)."""
    target, _, attr = ref.rpartition(":")
    if not target or not attr:
        problems.add(path, f"'{ref}' must be 'module:name' or 'file.py:name'")
        return None
    if target.endswith(".py"):
        file = next((d / target for d in _skill_dirs(base_dir) if (d / target).is_file()), None)
        if file is None:
            problems.add(path, f"no file '{target}' beside the workflow or in skills/")
            return None
        module = _import_file(file, path, problems)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            problems.add(path, f"cannot import module '{target}': {e}")
            return None
        except Exception as e:  # noqa: BLE001 - user code failed while importing
            problems.add(path, f"importing '{target}' failed: {type(e).__name__}: {e}")
            return None
    if module is None:
        return None
    try:
        return getattr(module, attr)
    except AttributeError:
        problems.add(path, f"'{target}' has no attribute '{attr}'")
        return None


def _import_file(file: Path, path: tuple[Any, ...], problems: _Problems) -> Any:
    name = f"engine_user_{abs(hash(str(file.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        problems.add(path, f"cannot import '{file}'")
        return None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - user code failed while importing
        problems.add(path, f"importing '{file}' failed: {type(e).__name__}: {e}")
        return None
    sys.modules[name] = module
    return module


def workflow_json_schema() -> dict[str, Any]:
    """JSON Schema of the workflow format, for editor completion."""
    schema = Workflow.model_json_schema(by_alias=True)
    from engine.skills.expand import USES_STEP_SCHEMA  # steps may also be `uses: skill@version`

    schema["$defs"]["UsesStep"] = USES_STEP_SCHEMA
    schema["properties"]["steps"]["items"] = {"anyOf": [{"$ref": "#/$defs/Step"}, {"$ref": "#/$defs/UsesStep"}]}
    # `script: file.py:function` is shorthand for `script: {function: file.py:function}`.
    schema["$defs"]["Step"]["properties"]["script"] = {
        "anyOf": [{"type": "string", "pattern": ".+:.+"}, {"$ref": "#/$defs/ScriptSpec"}, {"type": "null"}],
        "default": None}
    # `cache: true` / `cache: false` are shorthands the loader accepts (engine.spec.cache).
    cache = schema["$defs"]["LLMSpec"]["properties"]["cache"]
    cache["anyOf"] = [{"type": "boolean"}, *cache.get("anyOf", [])]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "engine workflow"
    return schema


def _has_batch_api(provider: str) -> bool:
    from engine.provider_batch.apis import batch_api

    return batch_api(provider) is not None
