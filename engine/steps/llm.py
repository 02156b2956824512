"""llm steps: servers first (caches, promoted artifacts), then the tiers under the step's quality
policy (`engine.quality.cascade`, which asks them through `engine.steps.asking`: validation,
re-asks, fallbacks, escalation, the call log).

Messages put static content first (system prompt + schema instructions, identical on every call)
and the rendered prompt last, so provider and llama.cpp prefix caches hit. What a server answers
is handed out as a copy (`copy_json`), so a caller that changes its result changes nothing stored.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import jsonschema

from engine import strict_json
from engine.errors import StepError
from engine.hashing import StringInputMemo, input_hash
from engine.pricing import baseline_cost, output_tokens_of, premium_price
from engine.providers.calls import ProviderCalls, drive
from engine.quality.trust import UNVERIFIED
from engine.spec.models import LLMSpec
from engine.steps.asking import (CompiledStep, LLMCall, ask_tiers, ask_tiers_calls, compiled, cost_of, log_call,
                                 parse_and_validate, reask_message, system_message)
from engine.steps.base import StepContext, StepOutcome
from engine.templating import TemplateError, render, render_text

__all__ = ["CompiledStep", "LLMCall", "ask_tiers", "ask_tiers_calls", "compiled", "copy_json", "cost_of",
           "llm_step_calls", "log_call", "parse_and_validate", "prepare_call", "reask_message", "run_llm_step",
           "serve_early", "system_message"]

def copy_json(value: Any) -> Any:
    """A deep copy of a JSON-shaped value (dicts, lists, scalars), cheaper than `copy.deepcopy`:
    what a server answers from a table or a cache is handed out as a copy, so a caller that
    changes its result changes nothing stored."""
    kind = type(value)
    if kind is dict:
        return {k: v if type(v) in _SCALARS else copy_json(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _SCALARS else copy_json(v) for v in value]
    if kind in _SCALARS:
        return value
    return copy.deepcopy(value)


_SCALARS = frozenset({str, int, float, bool, type(None)})


def prepare_call(ctx: StepContext, spec: LLMSpec, values: dict[str, Any]) -> LLMCall:
    try:
        prompt = render_text(spec.prompt if isinstance(spec.prompt, str) else "", values)
    except TemplateError as e:
        raise StepError(ctx.step_id, f"prompt: {e}") from e
    schema = spec.schema_
    if spec._templated_schema:
        try:
            schema = render(spec.schema_, values)
            strict_json.validator(schema).check_schema(schema)
        except TemplateError as e:
            raise StepError(ctx.step_id, f"schema: {e}") from e
        except jsonschema.SchemaError as e:
            raise StepError(ctx.step_id, f"the rendered schema is not a valid JSON Schema: {e.message}") from e
    assert isinstance(schema, dict)
    static = compiled(spec)
    system = static.system if static.system is not None else system_message(spec, schema)
    return LLMCall(
        step_id=ctx.step_id, spec=spec, values=values, schema=schema,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": prompt}],
        prompt_hash=static.prompt_hash, schema_hash=static.schema_hash, input_hash=input_hash(values),
    )


def run_llm_step(ctx: StepContext, spec: LLMSpec, values: dict[str, Any]) -> StepOutcome:
    """Serve an llm step: registered servers first (see `engine.serving`), then the tiers."""
    return drive(llm_step_calls(ctx, spec, values))


def llm_step_calls(ctx: StepContext, spec: LLMSpec, values: dict[str, Any], *,
                   early: bool = True, full_values: dict[str, Any] | None = None) -> ProviderCalls[StepOutcome]:
    """`run_llm_step` as a generator of provider calls (see `engine.providers.calls`): driven
    synchronously by `run_llm_step`, on an event loop by the async runner. `early=False`: the
    caller has already asked `serve_early` (and it did not answer). `full_values`: the inputs
    before compression, which reference checks ask with."""
    premium = _premium(ctx.config)
    if early:
        served = _serve_early(ctx, spec, values, premium)
        if served is not None:
            return served
    call = prepare_call(ctx, spec, values)
    if full_values is not None:
        call.full = prepare_call(ctx, spec, full_values)
    for server in ctx.servers:  # a server that runs the answering itself (the exact cache's single flight)
        around = getattr(server, "around_calls", None)
        if around is not None:
            return (yield from around(ctx, call, lambda: _answer_calls(ctx, call, premium)))
    return (yield from _answer_calls(ctx, call, premium))


def _answer_calls(ctx: StepContext, call: LLMCall, premium: Any) -> ProviderCalls[StepOutcome]:
    """The servers' answer (caches, promoted lookups), else the tiers'; the servers observe it."""
    for server in ctx.servers:
        serve_calls = getattr(server, "serve_calls", None)  # a server that may call providers itself
        served = (yield from serve_calls(ctx, call)) if serve_calls is not None else server.serve(ctx, call)
        if served is not None:
            served.baseline_cost = baseline_cost(premium, call.messages, served.output, served.attempts)
            if served.trust == UNVERIFIED and served.served_by == "cache":
                from engine.quality.cascade import sample_served_calls

                served = yield from sample_served_calls(ctx, call, served)
            served.output = copy_json(served.output)  # the caller's to change: never the table's object
            return served
    from engine.quality.cascade import ask_with_quality_calls

    outcome = yield from ask_with_quality_calls(ctx, call)
    outcome.baseline_cost = baseline_cost(premium, call.messages, outcome.output, outcome.attempts)
    for server in ctx.servers:
        server.observe(ctx, call, outcome)
    return outcome


def serve_early(ctx: StepContext, spec: LLMSpec, values: dict[str, Any]) -> StepOutcome | None:
    """A promoted lookup's answer from the step's inputs alone, or None: a plain call, so the
    runner tries it before it builds the step's generators (the in-process fast path)."""
    if not ctx.servers:
        return None
    return _serve_early(ctx, spec, values, _premium(ctx.config))


def _serve_early(ctx: StepContext, spec: LLMSpec, values: dict[str, Any], premium: Any) -> StepOutcome | None:
    """Servers that answer from the inputs alone (`serve_early`: promoted lookups), before the
    call is prepared. Only for steps whose system text is static (the baseline needs it)."""
    static = None
    for server in ctx.servers:
        early = getattr(server, "serve_early", None)
        if early is None:
            continue
        static = static or compiled(spec)
        if static.system is None:
            return None
        served = early(ctx, spec, values)
        if served is not None:
            prompt_tokens = _prompt_tokens(spec, values)
            if prompt_tokens is None:
                return None  # the full path reports the template error
            # the same estimate as `baseline_cost` (two messages), the system's share computed once
            tokens_in = static.system_tokens + prompt_tokens + 4 + 3
            out_tokens = _output_tokens(served.output)
            served.baseline_cost = premium.cost(tokens_in, out_tokens)
            served.output = copy_json(served.output)  # the caller's to change: never the table's object
            return served  # type: ignore[no-any-return]
    return None


_prompt_lengths: StringInputMemo[int] = StringInputMemo()


def _prompt_tokens(spec: LLMSpec, values: dict[str, Any]) -> int | None:
    """The prompt's share of the baseline estimate (its rendered length / 3), remembered per
    prompt template and input; None when the prompt does not render."""
    source = spec.prompt if isinstance(spec.prompt, str) else ""

    def compute() -> int | None:
        try:
            return math.ceil(len(render_text(source, values)) / 3)
        except TemplateError:
            return None

    return _prompt_lengths.get(source, values, compute)


_out_tokens: dict[int, tuple[Any, int]] = {}


def _output_tokens(output: Any) -> int:
    """`output_tokens_of`, once per output object (a lookup serves the same row objects again)."""
    hit = _out_tokens.get(id(output))
    if hit is None or hit[0] is not output:
        if len(_out_tokens) > 65536:
            _out_tokens.clear()
        hit = _out_tokens[id(output)] = (output, output_tokens_of(output))
    return hit[1]


_premiums: dict[int, tuple[Any, Any]] = {}


def _premium(config: Any) -> Any:
    """`premium_price` of a config, once per config object (configs are not changed in place)."""
    hit = _premiums.get(id(config))
    if hit is None or hit[0] is not config:
        if len(_premiums) > 256:
            _premiums.clear()
        hit = _premiums[id(config)] = (config, premium_price(config.tiers, config.pricing))
    return hit[1]
