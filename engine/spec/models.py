"""Pydantic models of a workflow file. YAML `llm:` maps to `LLMSpec`, `script:` to `ScriptSpec`,
`decision:` to `DecisionSpec`. Unknown keys are forbidden everywhere."""

from __future__ import annotations

import re
from typing import Any, Literal, Union

from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from engine.spec.cache import CacheSpec
from engine.spec.quality import QualitySpec

_ID = r"^[A-Za-z_][A-Za-z0-9_]*$"
WORKFLOW_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
"""A workflow name: it becomes part of file names (promoted artifacts, exports), so it is one
safe path segment: letters, digits, `_`, `.` and `-`, starting with a letter or digit, no `..`."""
MAX_TOKENS_CAP = 1_000_000
"""The largest `max_tokens` accepted: above any model's output limit, so a larger one is a typo."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class FileRef(Strict):
    """`{file: path}`: content kept in a file, relative to the workflow."""

    file: str


class ModelEntry(Strict):
    """One model in a tier's chain: `provider:model` plus its price per million tokens."""

    model: str = Field(description="provider:model, e.g. llamacpp:smollm2 or openai:gpt-4o-mini")
    input_price: float | None = Field(
        None, ge=0, strict=True, allow_inf_nan=False, description="USD per million input tokens (default: the pricing table)")
    output_price: float | None = Field(
        None, ge=0, strict=True, allow_inf_nan=False, description="USD per million output tokens (default: the pricing table)")
    cached_input_price: float | None = Field(None, ge=0, strict=True, allow_inf_nan=False, description="USD per million cached input tokens")
    options: dict[str, Any] = Field(default_factory=dict, description="provider options")
    batch: bool = Field(False, description="in batch runs (engine run --inputs), send this model's calls through "
                                           "its provider's batch API at the batch rate (openai, anthropic)")

    @field_validator("model")
    @classmethod
    def _has_provider(cls, v: str) -> str:
        if ":" not in v or not v.split(":", 1)[0] or not v.split(":", 1)[1]:
            raise ValueError(f"'{v}' must be 'provider:model'")
        return v

    @property
    def provider(self) -> str:
        return self.model.split(":", 1)[0]

    @property
    def model_name(self) -> str:
        return self.model.split(":", 1)[1]


TierChain = list[ModelEntry]


class ScriptSpec(Strict):
    """A deterministic Python callable: `module:function` or `file.py:function`."""

    function: str = Field(description="module:function, or path/to/file.py:function")
    schema_: FileRef | dict[str, Any] | None = Field(
        None, alias="schema", union_mode="left_to_right", description="optional output JSON Schema")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    _callable: Callable[..., Any] | None = PrivateAttr(None)

    @field_validator("function")
    @classmethod
    def _callable_ref(cls, v: str) -> str:
        if ":" not in v:
            raise ValueError(f"'{v}' must be 'module:function' or 'file.py:function'")
        return v


class ClassifierSpec(Strict):
    """`promote.classifier:` a distilled classifier for a step whose output is a closed set (enums,
    booleans): sentence embeddings plus a logistic regression trained on trusted pairs only,
    serving only when its confidence clears a threshold calibrated on held-out trusted pairs."""

    enabled: bool = Field(True, strict=True, description="propose classifiers for this step (closed outputs only)")
    target_precision: float = Field(0.99, gt=0, le=1, strict=True,
                                    description="precision the abstention threshold is calibrated for")
    min_pairs: int = Field(100, ge=10, strict=True, description="distinct trusted input/answer pairs needed to train")
    retrain_share: float = Field(0.2, gt=0, strict=True,
                                 description="retrain (a new version) once new trusted pairs reach this share of "
                                             "the pairs the accepted version was trained on")
    embedder: str = Field("minilm", description="sentence embedder (the semantic cache's: minilm | hash | openai:M)")
    input: str | None = Field(None, description="the step input to embed (default: every input)")
    c: float = Field(10.0, gt=0, strict=True, allow_inf_nan=False, alias="C",
                     description="inverse regularisation strength of the logistic regression")
    held_out: float = Field(0.2, gt=0, lt=0.5, strict=True,
                            description="share of trusted pairs in each cross-fitting fold (0.2: five folds; each "
                                        "fold is scored by a model fitted on the others)")
    score: Literal["margin", "top"] = Field(
        "margin", description="confidence the threshold applies to: margin (top probability minus the runner-up's) "
                              "or top (the top probability)")
    repeats: int = Field(3, ge=1, le=10, strict=True,
                         description="cross-fitting repeats, each with a new deal of the folds; the threshold is "
                                     "calibrated on all of them together")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RouteSpec(Strict):
    """`route:` on an llm step: a learned router that predicts, from the input's embedding and before
    any call, whether the cheapest tier's answer will agree with the reference, and sends the input
    straight to the next tier when it will probably not (see engine.quality.router). Trained on the
    step's own reference checks and labels, proposed and accepted like a classifier; `tier: auto`
    uses an accepted router without this block (with these defaults)."""

    enabled: bool = Field(True, strict=True, description="propose routers for this step and route with an accepted one")
    target_agreement: float = Field(0.98, gt=0, le=1, strict=True,
                                    description="agreement with the reference that inputs sent to the cheapest tier "
                                                "must reach (calibrated out of fold)")
    min_examples: int = Field(50, ge=10, strict=True,
                              description="distinct checked or labelled inputs of the cheapest tier needed to train")
    retrain_share: float = Field(0.2, gt=0, strict=True,
                                 description="retrain (a new version) once new evidence reaches this share of the "
                                             "inputs the accepted version was trained on")
    embedder: str = Field("hash", description="embedder of the input (the cache's: hash | static | minilm | "
                                              "openai:M; default: the step's semantic cache's, else hash); hash "
                                              "and static route in well under 5 ms on CPU, minilm does not")
    input: str | None = Field(None, description="the step input to embed (default: every input)")
    c: float = Field(1.0, gt=0, strict=True, allow_inf_nan=False, alias="C",
                     description="inverse regularisation strength of the logistic regression")
    folds: int = Field(5, ge=2, le=20, strict=True, description="cross-fitting folds of the out-of-fold calibration")
    demote_threshold: float | None = Field(
        None, ge=0, le=1, description="disagreement on routed answers' reference checks above which the router is "
                                      "demoted (default: 1 - target_agreement; with promote.demote_confidence)")
    explore: float = Field(0.0, ge=0, le=1, strict=True,
                           description="share of inputs routed up whose cheapest tier is still asked, off the "
                                       "request path (inline in batch runs), and compared with the reference's "
                                       "answer: new evidence where the router sends nothing down")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PromoteSpec(Strict):
    """`promote:` on an llm step: when its logged answers graduate to a lookup or a script."""

    enabled: bool = Field(True, strict=True, description="mine this step for promotions")
    evidence: Literal["trusted", "any"] = Field(
        "trusted", description="trusted: only reference, verified and labelled answers build lookups and "
                               "scripts; any: every valid answer counts (agreement is not correctness)")
    min_calls: int = Field(3, ge=1, strict=True, description="calls an input needs before it may become a lookup row")
    min_agreement: float = Field(0.95, ge=0, le=1, strict=True, description="share of the most common answer required")
    normalize: list[Literal["case", "whitespace"]] = Field(
        default_factory=lambda: ["case", "whitespace"],  # type: ignore[arg-type]
        description="how inputs are normalised into keys")
    script_tier: str | None = Field(None, description="the strong tier that writes scripts (default: premium)")
    script_examples: int = Field(8, ge=1, le=100, strict=True, description="examples shown to the script writer")
    spot_check: float = Field(0.02, ge=0, le=1, strict=True, description="share of materialized serves re-asked of the llm")
    demote_window: int = Field(100, ge=1, strict=True, description="spot checks considered for demotion")
    demote_min_checks: int = Field(10, ge=1, strict=True, description="spot checks needed before demotion can happen")
    demote_threshold: float = Field(0.03, ge=0, le=1, strict=True, description="disagreement above which the artifact is demoted")
    demote_confidence: float = Field(
        0.95, ge=0, lt=1, strict=True, description="demote only when disagreement exceeds the threshold at this one-sided "
                                      "confidence (Wilson lower bound); 0 compares the raw rate")
    classifier: ClassifierSpec = Field(default_factory=ClassifierSpec,  # type: ignore[arg-type]
                                       description="a distilled classifier (closed outputs; see engine.promotion.classifier)")


class ReduceSpec(Strict):
    """`context.reduce:` the prompt that combines the per-chunk results into the step's output."""

    system: str | FileRef | None = Field(None, description="static part (default: the step's system)")
    prompt: str | FileRef = Field(description="jinja2 over the step's inputs and `results` (the chunk outputs, in order)")
    schema_: FileRef | dict[str, Any] | str | None = Field(
        None, alias="schema", union_mode="left_to_right", description="JSON Schema of the combined output "
                                                                       "(default: the step's schema)")
    max_tokens: int | None = Field(None, gt=0, le=MAX_TOKENS_CAP, strict=True,
                                   description="token cap of the reduce call (default: the step's)")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class CompressSpec(Strict):
    """`context.compress:` shrink the input before it is sent (see engine.compress)."""

    mode: Literal["extractive", "tokens"] = Field(
        description="extractive: keep the sentences most relevant to the step's question (embeddings, no "
                    "model call); tokens: drop the tokens a small causal LM finds most predictable (LLMLingua)")
    ratio: float | None = Field(None, gt=0, lt=1, allow_inf_nan=False,
                                description="share of the input's tokens to keep (default 0.5)")
    budget: int | None = Field(None, gt=0, strict=True, description="or: tokens the compressed input may take")
    min_tokens: int = Field(0, ge=0, strict=True, description="inputs of at most this many tokens go out as is")
    query: str | None = Field(None, description="extractive: what the sentences must be relevant to, a jinja2 "
                                                "template over the other step inputs (default: the rendered "
                                                "prompt without the input)")
    embedder: str = Field("minilm", description="extractive: the embedder (the cache's embedders)")
    scorer: str | None = Field(None, description="tokens: the tier whose llama.cpp model scores the tokens "
                                                 "(default: the first tier with a llamacpp model)")
    segment: int = Field(128, ge=16, le=512, strict=True,
                         description="tokens: tokens scored at once, each segment conditioned on the "
                                     "compressed text before it")

    @model_validator(mode="after")
    def _one_target(self) -> CompressSpec:
        if self.ratio is not None and self.budget is not None:
            raise ValueError("give ratio or budget, not both")
        if self.query is not None and self.mode != "extractive":
            raise ValueError("query only applies with mode: extractive")
        if self.scorer is not None and self.mode != "tokens":
            raise ValueError("scorer only applies with mode: tokens")
        return self

    @property
    def keep(self) -> float:
        return self.ratio if self.ratio is not None else 0.5


class ContextSpec(Strict):
    """`context:` on an llm step: what to do with an input too long for the model's context, and
    whether to compress it first."""

    strategy: Literal["truncate", "chunk"] | None = Field(
        None, description="truncate: cut the input to fit (logged); chunk: split it on paragraph or sentence "
                          "boundaries, run the step per chunk, then `reduce`; none: send it as is (the step "
                          "fails when it does not fit)")
    compress: CompressSpec | None = Field(None, description="shrink the input before it is sent (extractive "
                                                            "or token-level), under the quality monitor")
    max_input_tokens: int | None = Field(
        None, gt=0, strict=True, description="tokens the input may take (default: the smallest context of "
                                             "the step's tiers minus max_tokens and the static prompt)")
    input: str | None = Field(None, description="the step input to cut or chunk (default: the only one)")
    reduce: ReduceSpec | None = Field(None, description="chunk: combine the per-chunk outputs (without it "
                                                        "the output is the list of per-chunk outputs)")
    concurrency: int = Field(4, ge=1, le=256, strict=True, description="chunks run at once")

    @model_validator(mode="after")
    def _something(self) -> ContextSpec:
        if self.strategy is None and self.compress is None:
            raise ValueError("give a strategy (truncate or chunk), compress, or both")
        if self.strategy == "chunk" and self.compress is not None:
            raise ValueError("compress does not combine with strategy: chunk (a compressed input is checked "
                             "against the full input in one call); use strategy: truncate")
        return self

    @property
    def what(self) -> str:
        """What the context does, for labels and messages."""
        parts = [p for p in (self.strategy, f"compress: {self.compress.mode}" if self.compress else None) if p]
        return ", ".join(parts)


class LLMSpec(Strict):
    """A prompt sent to a tier, validated against a schema, capped at `max_tokens`."""

    tier: str = Field("local", description="the tier to ask first; auto: every tier, cheapest first, "
                                            "gated by calibrated confidence")
    system: str | FileRef | None = Field(None, description="the static part of the prompt")
    prompt: str | FileRef = Field(description="jinja2 template over the step's inputs")
    schema_: FileRef | dict[str, Any] | str = Field(
        alias="schema", union_mode="left_to_right",
        description="JSON Schema (inline or {file:}), or a pydantic model 'module:Model'")
    max_tokens: int = Field(gt=0, le=MAX_TOKENS_CAP, strict=True, description="the token cap (required)")
    temperature: float = Field(0.0, ge=0, le=2, strict=True)
    retries: int = Field(1, ge=0, le=10, strict=True, description="re-asks per tier after a validation failure")
    escalate: list[str] = Field(default_factory=list, description="tiers to try next, in order")
    promote: PromoteSpec = Field(default_factory=PromoteSpec,  # type: ignore[arg-type]
                                 description="promotion thresholds for this step")
    cache: CacheSpec | None = Field(None, description="exact/semantic cache settings (see engine.spec.cache)")
    quality: QualitySpec | None = Field(
        None, description="reference tier, sampling, confidence gating (over engine.yaml's quality:)")
    context: ContextSpec | None = Field(None, description="long inputs: truncate, chunk or compress (see engine.steps.context)")
    route: RouteSpec | None = Field(
        None, description="a learned router before the cheapest tier (see engine.quality.router); tier: auto uses an "
                          "accepted router without it")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    _reduce: Any = PrivateAttr(None)
    """The `context.reduce` prompt as an LLMSpec of its own (filled by the loader)."""
    _pydantic_model: type[BaseModel] | None = PrivateAttr(None)
    _templated_schema: bool = PrivateAttr(False)
    _compiled: Any = PrivateAttr(None)
    """Per-step constants built on first use (engine.steps.llm.compiled): hashes, system text, validator."""


class MissLLM(Strict):
    llm: LLMSpec


class MissDefault(Strict):
    default: Any


class DecisionSpec(Strict):
    """A lookup table keyed by a template; zero tokens."""

    key: str = Field(description="template over the step's inputs giving the lookup key")
    table: FileRef | dict[str, Any] | str = Field(
        union_mode="left_to_right", description="inline mapping, {file: path}, or a path (YAML/JSON/CSV)")
    key_column: str | None = Field(None, description="CSV: the key column (default: the first)")
    value_column: str | None = Field(None, description="CSV: the value column (default: the second)")
    normalize: list[Literal["case", "whitespace"]] = Field(default_factory=lambda: ["case", "whitespace"])  # type: ignore[arg-type]
    on_miss: Literal["error"] | MissDefault | MissLLM = Field("error", description="error, {default: v} or {llm: ...}")
    _normalized_table: dict[str, Any] | None = PrivateAttr(None)


KINDS = ("script", "decision", "llm", "workflow")


class Step(Strict):
    id: str = Field(pattern=_ID)
    inputs: dict[str, Any] = Field(default_factory=dict, description="name -> template over inputs.* and steps.*")
    when: str | bool | None = Field(None, description="skip the step unless this is true")
    for_each: str | None = Field(None, description="a template that yields a list: the step runs once per item "
                                                   "and its output is the list of the items' outputs")
    as_: str | None = Field(None, alias="as", pattern=_ID, description="for_each: the item's name in the step's "
                                                                       "inputs (default: item)")
    concurrency: int | None = Field(None, ge=1, le=1024, strict=True, description="for_each: items run at once "
                                                                                  "(default: 4)")
    on_item_error: Literal["fail", "skip", "collect"] | None = Field(
        None, description="for_each: fail the step (default), skip the item, or collect the error "
                          "(its output is null; `steps.<id>.errors` lists index, item and error)")
    script: ScriptSpec | None = None
    decision: DecisionSpec | None = None
    llm: LLMSpec | None = None
    workflow: str | None = Field(None, description="a sub-workflow file (relative to this one): `inputs` are its "
                                                   "inputs, its outputs are the step's output")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    _workflow: Any = PrivateAttr(None)
    """The loaded sub-workflow (filled by the loader)."""

    @model_validator(mode="before")
    @classmethod
    def _script_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("script"), str):
            data = {**data, "script": {"function": data["script"]}}
        return data

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> Step:
        kinds = [k for k in KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else "none"
            raise ValueError(f"a step needs exactly one of script, decision, llm, workflow (found: {found})")
        if self.for_each is None:
            given = [k for k, v in (("as", self.as_), ("concurrency", self.concurrency),
                                    ("on_item_error", self.on_item_error)) if v is not None]
            if given:
                raise ValueError(f"{', '.join(given)} only applies with for_each")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def item_name(self) -> str:
        return self.as_ or "item"


class Workflow(Strict):
    name: str
    version: Union[int, str] = 1
    description: str | None = None
    inputs: dict[str, dict[str, Any]] = Field(default_factory=dict, description="name -> JSON Schema")
    steps: list[Step] = Field(min_length=1)
    outputs: dict[str, Any] = Field(default_factory=dict, description="name -> template over inputs and steps")
    tiers: dict[str, TierChain] = Field(default_factory=dict, description="tier overrides for this workflow")

    model_config = ConfigDict(extra="forbid")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not re.fullmatch(WORKFLOW_NAME, name) or ".." in name:
            raise ValueError(f"workflow name {name[:80]!r} is not allowed: use 1-128 letters, digits, '_', "
                             "'.' or '-', starting with a letter or digit, without '..' (it names files)")
        return name

    # Filled by the loader, not by YAML.
    _path: Path | None = PrivateAttr(None)
    _base_dir: Path | None = PrivateAttr(None)
    _config: Any = PrivateAttr(None)
    _schedule: Any = PrivateAttr(None)
    """(chain, waits-for indices), computed by the runner on first use."""

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def config(self) -> Any:
        return self._config

    @property
    def step_ids(self) -> list[str]:
        return [s.id for s in self.steps]

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)
