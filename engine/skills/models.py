"""Pydantic models of a skill file (`<library>/<group>/<name>/v<N>.yaml`).

A skill is a reusable, versioned step. An llm skill carries a prompt template, a static system
prefix, a schema, a default tier and a token cap; a script skill names a Python function with
input and output schemas. Both declare `inputs` (name -> JSON Schema), overridable `params` with
defaults, a one-line `description`, and `tests` (inputs, optional fake reply, expectations).

Skill templates see params at load time through `[[ ... ]]` (e.g. `[[ labels | join(", ") ]]`,
or a whole value `"[[ labels ]]"` that stays a list); `{{ ... }}` is left for the step's inputs
at run time, as in any workflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from engine.spec.models import FileRef, Strict

_NAME = r"^[a-z][a-z0-9_]*$"

LLM_OVERRIDES = ("tier", "max_tokens", "retries", "escalate", "temperature", "quality")
"""Settings of an llm skill a workflow step may override under `with:` (besides its params)."""


class SkillLLM(Strict):
    tier: str = Field("local", description="default tier")
    system: str | FileRef | None = Field(None, description="static system prefix; may use [[ params ]]")
    prompt: str | FileRef = Field(description="jinja2 template over the inputs ({{ }}) and params ([[ ]])")
    schema_: FileRef | dict[str, Any] | str = Field(alias="schema", union_mode="left_to_right")
    max_tokens: int | str = Field(description="default token cap (may be a [[ ]] expression)")
    temperature: float = 0.0
    retries: int = 1
    escalate: list[str] = Field(default_factory=list)
    quality: dict[str, Any] | None = Field(None, description="quality: defaults (see engine.quality.spec)")

    model_config = Strict.model_config | {"populate_by_name": True}


class SkillScript(Strict):
    function: str = Field(description="file.py:function beside the skill, or module:function")
    output: FileRef | dict[str, Any] | None = Field(None, description="output JSON Schema")

    @field_validator("function")
    @classmethod
    def _ref(cls, v: str) -> str:
        if ":" not in v:
            raise ValueError(f"'{v}' must be 'file.py:function' or 'module:function'")
        return v


class Check(Strict):
    """One check on a test case's output: `path` picks a value (dotted; empty = the output)."""

    path: str = ""
    equals: Any = None
    one_of: list[Any] | None = Field(None, alias="in")
    contains: str | None = None
    matches: str | None = None
    max_words: int | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")

    model_config = Strict.model_config | {"populate_by_name": True}


class SkillTest(Strict):
    name: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict, description="overrides, as a step's `with:`")
    reply: Any = Field(None, description="llm skills: what the fake model answers (offline tests)")
    expect: Any = Field(None, description="the exact output")
    checks: list[Check] = Field(default_factory=list)
    expect_error: str | bool | None = Field(None, description="the run must fail (text: in the message)")
    prompt_contains: list[str] = Field(default_factory=list, description="fake: the prompt sent contains these")
    local: bool = Field(True, description="also run with the local model (false: the case only holds for its fake reply)")

    @property
    def has_expect(self) -> bool:
        return "expect" in self.model_fields_set


class Skill(Strict):
    name: str = Field(pattern=_NAME)
    version: int = Field(ge=1)
    description: str = Field(min_length=1)
    inputs: dict[str, dict[str, Any]] = Field(default_factory=dict, description="name -> JSON Schema")
    params: dict[str, Any] = Field(default_factory=dict, description="name -> default value")
    llm: SkillLLM | None = None
    script: SkillScript | None = None
    tests: list[SkillTest] = Field(default_factory=list)

    _path: Path | None = PrivateAttr(None)
    _library: str = PrivateAttr("")

    @model_validator(mode="after")
    def _one_kind(self) -> Skill:
        if (self.llm is None) == (self.script is None):
            raise ValueError("a skill needs exactly one of llm, script")
        return self

    @property
    def kind(self) -> Literal["llm", "script"]:
        return "llm" if self.llm is not None else "script"

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def library(self) -> str:
        return self._library

    @property
    def base_dir(self) -> Path:
        return self._path.parent if self._path else Path.cwd()

    def overridable(self) -> list[str]:
        return sorted(self.params) + (list(LLM_OVERRIDES) if self.llm is not None else [])
