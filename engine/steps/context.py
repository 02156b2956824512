"""Long inputs on llm steps: `context: {max_input_tokens: N, strategy: truncate | chunk}`.

The budget N (default: the smallest context window of the step's tiers, minus `max_tokens`, the
static prefix and the rest of the prompt, a margin for the chat template, and room for each
re-ask, which repeats the rejected reply and adds the error) is what the
chosen input (`context.input`) may take. Tokens are counted with the first tier's model: exactly
on the local tier (llama.cpp's tokenizer), approximately elsewhere (`engine.tokens`); the step
record's `context` says which.

- An input within N goes out as is.
- `truncate`: the input is cut to N tokens (at the last whitespace); the cut is logged as a
  warning (logger `engine.context`) and on the step record, never silent.
- `chunk`: the input is split on paragraph boundaries, paragraphs too long on sentence
  boundaries, into chunks of at most N tokens; the step runs once per chunk (concurrently, the
  `for_each` machinery: each chunk is its own llm call, cached, checked and costed on its own),
  then `reduce:` combines the chunk outputs (`results`, in order) into the step's output. When
  the results do not fit one reduce prompt, they are reduced in groups that fit, and the group
  outputs reduced again (a tree). Without `reduce:` the output is the list of chunk outputs.
- Whatever still does not fit (one sentence longer than N, a prompt over the window even after
  the cut, results too long to combine) fails the step with a message saying so.

Reduce calls are logged under the step id `<id>.reduce` (their prompt differs from the step's, so
they never mix with its promotion evidence); their cost counts in the step's.

`compress: {mode: extractive | tokens, ratio | budget, ...}` shrinks the input first
(`engine.compress`), then `strategy` (none or truncate) applies to what is left. The record's
`context.compress` gives the mode, tokens before and after, the target and the time taken. The
quality monitor decides per request whether to compress (`engine.quality.compression`): a sampled
share of compressed answers is checked against the reference's answer to the full input, and a
step where compression changes answers sends the full input until its cool-off is over.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import Any

from engine.errors import StepError
from engine.providers.calls import Fanout, ProviderCalls, gather_calls
from engine.spec.models import LLMSpec
from engine.steps.base import StepContext, StepOutcome
from engine.tokens import TokenCounter, counter_for

log = logging.getLogger("engine.context")
MARGIN = 32
"""Tokens kept free for the chat template's role markers."""
REASK_TOKENS = 64
"""Room for one re-ask's error message; each re-ask also repeats the rejected reply (max_tokens)."""
_PARAGRAPHS = re.compile(r"\n\s*\n")
_SENTENCES = re.compile(r"(?<=[.!?。])\s+")


@dataclass
class _Plan:
    pieces: list[str]
    """The input as it goes out: one piece (fits or truncated) or the chunks."""
    info: dict[str, Any]


class _Blocking:
    """A blocking computation (tokenizing, loading the local model) yielded as a call, so the
    async driver runs it on a worker thread instead of the event loop."""

    name = "context"

    def __init__(self, fn: Any):
        self.fn = fn

    def complete(self, args: Any) -> Any:
        return self.fn(*args)


def context_step_calls(ctx: StepContext, spec: LLMSpec, values: dict[str, Any], *,
                       concurrent: bool = True) -> ProviderCalls[StepOutcome]:
    from engine.steps.llm import llm_step_calls

    context = spec.context
    assert context is not None and context.input is not None
    decision = None
    if context.compress is not None:
        from engine.quality.compression import decide

        decision = decide(ctx, spec)
    plan: _Plan = yield _Blocking(_plan), (ctx, spec, values, decision)  # type: ignore[misc,assignment]
    name = context.input
    if len(plan.pieces) == 1:  # it fits (maybe truncated): one call
        sent = {**values, name: plan.pieces[0]}
        compressed = decision is not None and plan.pieces[0] != values[name]
        outcome = yield from llm_step_calls(ctx, spec, sent, full_values=values if compressed else None)
        outcome.context = plan.info
        if compressed and decision is not None and plan.info.get("compress", {}).get("applied"):
            from engine.quality.compression import check_compressed_calls

            outcome = yield from check_compressed_calls(ctx, spec, values, outcome, decision)
            outcome.context = plan.info
        return outcome
    tasks = [(lambda piece=piece: llm_step_calls(ctx, spec, {**values, name: piece})) for piece in plan.pieces]
    chunks: list[StepOutcome] = yield from gather_calls(Fanout(tasks, limit=context.concurrency),
                                                         concurrent=concurrent)
    attempts = [a for o in chunks for a in o.attempts]
    outputs = [o.output for o in chunks]
    final = chunks[-1]
    reduce_spec: LLMSpec | None = spec._reduce
    rounds = 0
    if reduce_spec is not None:
        rctx = replace(ctx, step_id=f"{ctx.step_id}.reduce")
        rest = {k: v for k, v in values.items() if k != name}
        while True:
            groups: list[list[Any]] = yield _Blocking(_reduce_groups), (ctx, reduce_spec, rest, outputs)  # type: ignore[misc,assignment]
            rounds += 1
            tasks = [(lambda group=group: llm_step_calls(rctx, reduce_spec, {**rest, "results": group}))
                     for group in groups]
            reduced: list[StepOutcome] = yield from gather_calls(Fanout(tasks, limit=context.concurrency),
                                                                  concurrent=concurrent)
            attempts += [a for o in reduced for a in o.attempts]
            outputs = [o.output for o in reduced]
            final = reduced[-1]
            if len(groups) == 1:
                break
    info = {**plan.info, "reduce_rounds": rounds}
    return StepOutcome(
        output=outputs[0] if reduce_spec is not None else outputs, served_by=final.served_by, tier=final.tier,
        provider=final.provider, model=final.model, attempts=attempts, trust=final.trust,
        confidence=final.confidence, context=info,
        tokens_in=sum(a.get("tokens_in", 0) for a in attempts), tokens_out=sum(a.get("tokens_out", 0) for a in attempts),
        cost=sum(a.get("cost", 0.0) for a in attempts))


def _tiers(ctx: StepContext, spec: LLMSpec) -> list[str]:
    tiers = [spec.tier, *spec.escalate] if spec.tier != "auto" else list(ctx.config.tiers)
    return [t for t in tiers if t in ctx.config.tiers and ctx.config.chain(t)]


def _counters(ctx: StepContext, spec: LLMSpec) -> list[tuple[str, TokenCounter]]:
    tiers = _tiers(ctx, spec)
    if not tiers:
        raise StepError(ctx.step_id, f"context: no model in tier '{spec.tier}' to count tokens with")
    return [(t, counter_for(ctx.config.chain(t)[0])) for t in tiers]


def _static_tokens(counter: TokenCounter, spec: LLMSpec, values: dict[str, Any], ctx: StepContext) -> int:
    from engine.steps.llm import prepare_call

    call = prepare_call(ctx, spec, values)
    return sum(counter.count(m["content"]) for m in call.messages)


def _budget(ctx: StepContext, spec: LLMSpec, values: dict[str, Any], name: str,
            counters: list[tuple[str, TokenCounter]]) -> tuple[int, int, str]:
    """(N, the room the tightest tier leaves, that tier)."""
    empty = {**values, name: ""}
    best: tuple[int, str] | None = None
    for tier, counter in counters:
        room = (counter.context_window - spec.max_tokens - _static_tokens(counter, spec, empty, ctx) - MARGIN
                - spec.retries * (spec.max_tokens + REASK_TOKENS))
        if best is None or room < best[0]:
            best = (room, tier)
    assert best is not None
    room, tier = best
    n = spec.context.max_input_tokens if spec.context and spec.context.max_input_tokens else room
    return n, room, tier


def _plan(ctx: StepContext, spec: LLMSpec, values: dict[str, Any], decision: Any = None) -> _Plan:
    context = spec.context
    assert context is not None and context.input is not None
    name = context.input
    text = values.get(name)
    if not isinstance(text, str):
        raise StepError(ctx.step_id, f"context: input '{name}' must be text, not {type(text).__name__}")
    counters = _counters(ctx, spec)
    counter = counters[0][1]
    n, room, tier = _budget(ctx, spec, values, name, counters)
    if room <= 0:
        raise StepError(ctx.step_id, f"context: the prompt without input '{name}' plus max_tokens "
                                     f"{spec.max_tokens} already fills tier '{tier}' ({counter.how} count)")
    tokens = counter.count(text)
    info: dict[str, Any] = {"strategy": context.strategy, "input": name, "tokens": tokens, "max_input_tokens": n,
                            "counting": counter.how, "exact": counter.exact, "chunks": 0, "truncated": False}
    if context.compress is not None and decision is not None:
        if decision.compress:
            text = _compress(ctx, spec, values, text, counter, info)
            tokens = info["compress"]["tokens_after"]
        else:
            info["compress"] = {"mode": context.compress.mode, "applied": False, "tokens_before": tokens,
                                "tokens_after": tokens, "reason": decision.reason}
        info["compress"]["monitor"] = {"tier": decision.tier, "state": decision.state,
                                       "probation": decision.probation}
    if tokens <= n or context.strategy is None:  # no strategy: it goes as is (checked below)
        pieces = [text]
    elif context.strategy == "truncate":
        cut = counter.cut(text, n)
        space = cut.rfind(" ") if len(cut) < len(text) and not text[len(cut)].isspace() else -1
        if space > len(cut) // 2:
            cut = cut[:space]
        cut = cut.rstrip()
        kept = counter.count(cut)
        info.update(truncated=True, kept_tokens=kept)
        log.warning("step '%s': input '%s' truncated from %d to %d tokens (%s)", ctx.step_id, name, tokens, kept,
                    counter.how)
        pieces = [cut]
    else:
        pieces = split_text(text, n, counter.count, ctx.step_id)
        info["chunks"] = len(pieces)
        log.info("step '%s': input '%s' (%d tokens, %s) split into %d chunks of at most %d tokens",
                 ctx.step_id, name, tokens, counter.how, len(pieces), n)
    for piece in pieces:  # what goes out must fit every tier, whatever N was set to
        for tier_name, tier_counter in counters:
            total = _static_tokens(tier_counter, spec, {**values, name: piece}, ctx) + spec.max_tokens + MARGIN
            if total > tier_counter.context_window:
                what = f"cut to {n} tokens" if len(pieces) > 1 or piece is not text else f"of {tokens} tokens"
                raise StepError(ctx.step_id, f"context: input '{name}' {what} still does not fit tier "
                                             f"'{tier_name}': ~{total} tokens with max_tokens > window "
                                             f"{tier_counter.context_window} ({tier_counter.how}); lower "
                                             "max_input_tokens")
    return _Plan(pieces, info)


def _compress(ctx: StepContext, spec: LLMSpec, values: dict[str, Any], text: str, counter: TokenCounter,
              info: dict[str, Any]) -> str:
    """`text` compressed as `context.compress` says; the figures go on the record (`info`)."""
    from engine.compress import compress

    context = spec.context
    assert context is not None and context.compress is not None and context.input is not None
    settings = context.compress
    query, embedder, scorer = "", None, None
    if settings.mode == "extractive":
        from engine.cache.embedders import get_embedder

        query = _query(ctx, spec, values, context.input)
        embedder = get_embedder(settings.embedder)
    else:
        scorer = _scorer(ctx, settings.scorer)
    done = compress(text, settings, count=counter.count, query=query, embedder=embedder, scorer=scorer)
    info["compress"] = done.info(settings.mode)
    if done.applied:
        log.info("step '%s': input '%s' compressed (%s) from %d to %d tokens in %.0f ms", ctx.step_id,
                 context.input, settings.mode, done.tokens_before, done.tokens_after, done.ms)
    return done.text


def _query(ctx: StepContext, spec: LLMSpec, values: dict[str, Any], name: str) -> str:
    """What extractive compression ranks sentences against: `compress.query` rendered, else the
    step's prompt rendered without the input, else its system prompt."""
    from engine.steps.llm import prepare_call
    from engine.templating import TemplateError, render_text

    assert spec.context is not None and spec.context.compress is not None
    template = spec.context.compress.query
    rest = {k: v for k, v in values.items() if k != name}
    if template is not None:
        try:
            return render_text(template, rest)
        except TemplateError as e:
            raise StepError(ctx.step_id, f"context.compress.query: {e}") from e
    query = prepare_call(ctx, spec, {**values, name: ""}).messages[-1]["content"].strip()
    if not query and isinstance(spec.system, str):
        query = spec.system.strip()
    return query


def _scorer(ctx: StepContext, tier: str | None) -> tuple[Any, Any]:
    """The (llama, lock) of the llama.cpp model that scores tokens: `tier`'s, else the first
    tier's that has one."""
    from engine.providers.registry import get_provider

    tiers = [tier] if tier is not None else list(ctx.config.tiers)
    for name in tiers:
        for entry in ctx.config.chain(name):
            if entry.provider == "llamacpp":
                loaded = get_provider("llamacpp").load(entry.model_name, entry.options)  # type: ignore[attr-defined]
                return loaded.llama, loaded.lock
    raise StepError(ctx.step_id, "context.compress: mode tokens needs a tier with a llamacpp model")


def split_text(text: str, limit: int, count: Any, step_id: str = "?") -> list[str]:
    """Chunks of at most `limit` tokens, split on paragraph boundaries, and paragraphs too long
    on sentence boundaries; a sentence longer than `limit` is an error (never cut silently)."""
    pieces: list[tuple[str, str]] = []  # (text, separator before it)
    for para in (p.strip() for p in _PARAGRAPHS.split(text)):
        if not para:
            continue
        if count(para) <= limit:
            pieces.append((para, "\n\n"))
            continue
        for i, sentence in enumerate(s for s in _SENTENCES.split(para) if s.strip()):
            size = count(sentence)
            if size > limit:
                raise StepError(step_id, f"context: a sentence of {size} tokens is longer than the "
                                         f"{limit}-token chunk budget ({sentence[:60]!r}...); it is not cut "
                                         "mid-sentence: raise max_input_tokens or use strategy: truncate")
            pieces.append((sentence, "\n\n" if i == 0 else " "))
    chunks: list[str] = []
    current = ""
    for piece, sep in pieces:
        candidate = f"{current}{sep}{piece}" if current else piece
        if current and count(candidate) > limit:
            chunks.append(current)
            current = piece
        else:
            current = candidate
    if current:
        chunks.append(current)
    return chunks


def _reduce_groups(ctx: StepContext, spec: LLMSpec, values: dict[str, Any], results: list[Any]) -> list[list[Any]]:
    """The results packed, in order, into groups whose reduce prompt fits every tier."""
    counters = _counters(ctx, spec)

    def fits(group: list[Any]) -> bool:
        return all(_static_tokens(c, spec, {**values, "results": group}, ctx) + spec.max_tokens + MARGIN
                   + spec.retries * (spec.max_tokens + REASK_TOKENS) <= c.context_window for _, c in counters)

    if fits(results):
        return [results]
    groups: list[list[Any]] = []
    current: list[Any] = []
    for result in results:
        if current and not fits([*current, result]):
            groups.append(current)
            current = []
        current.append(result)
        if len(current) == 1 and not fits(current):
            raise StepError(ctx.step_id, "context: one chunk result alone does not fit the reduce prompt; "
                                         "lower the reduce input (max_tokens) or the chunk size")
    groups.append(current)
    if len(groups) >= len(results):
        raise StepError(ctx.step_id, "context: the chunk results do not fit the reduce prompt two at a time; "
                                     "lower max_tokens or the chunk size")
    return groups
