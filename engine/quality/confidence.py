"""How sure a model was of its answer, from token log-probabilities, and the calibrated threshold.

Providers return per-token log-probabilities in OpenAI's chat format (`[{token, logprob,
top_logprobs: [{token, logprob}]}]`; llama-cpp-python gives the same). These are the model's
*unconstrained* distribution: under a grammar the forced `{` may sit at -10, so raw token
probabilities of the structure mean nothing. Only the answer's **value tokens** count:

- a value with a closed set of allowed values (`enum`, `const`, boolean) is renormalised over
  those values: at each of its tokens, the probability mass of the alternatives consistent with
  the chosen value, divided by the mass of the alternatives consistent with any allowed value;
- any other value: the geometric mean of its tokens' probabilities.

The answer's confidence is the lowest over its leaf values.
"""

from __future__ import annotations

import json
import math
from typing import Any

Span = tuple[int, int, tuple[Any, ...]]
"""(start, end, path) of a leaf value in the reply text."""


def leaf_spans(text: str) -> list[Span]:
    """Spans of the leaf values (not keys) of the JSON document in `text`."""
    spans: list[Span] = []
    i = _skip(text, 0)

    def value(i: int, path: tuple[Any, ...]) -> int:
        i = _skip(text, i)
        if i >= len(text):
            raise ValueError("truncated")
        ch = text[i]
        if ch == "{":
            i = _skip(text, i + 1)
            if text[i] == "}":
                return i + 1
            while True:
                i = _skip(text, i)
                key_end = _string_end(text, i)
                key = json.loads(text[i:key_end])
                i = _skip(text, key_end)
                if text[i] != ":":
                    raise ValueError("expected ':'")
                i = value(i + 1, (*path, key))
                i = _skip(text, i)
                if text[i] == ",":
                    i += 1
                    continue
                if text[i] == "}":
                    return i + 1
                raise ValueError("expected ',' or '}'")
        if ch == "[":
            i = _skip(text, i + 1)
            if text[i] == "]":
                return i + 1
            n = 0
            while True:
                i = _skip(text, value(i, (*path, n)))
                n += 1
                if text[i] == ",":
                    i += 1
                    continue
                if text[i] == "]":
                    return i + 1
                raise ValueError("expected ',' or ']'")
        end = _string_end(text, i) if ch == '"' else _scalar_end(text, i)
        spans.append((i, end, path))
        return end

    value(i, ())
    return spans


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _string_end(text: str, i: int) -> int:
    if text[i] != '"':
        raise ValueError("expected a string")
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
            continue
        if text[j] == '"':
            return j + 1
        j += 1
    raise ValueError("unterminated string")


def _scalar_end(text: str, i: int) -> int:
    j = i
    while j < len(text) and text[j] not in ",}] \t\r\n":
        j += 1
    if j == i:
        raise ValueError("expected a value")
    return j


def _subschema(schema: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        if not isinstance(schema, dict):
            return None
        if isinstance(part, int):
            schema = schema.get("items")
        else:
            schema = (schema.get("properties") or {}).get(part)
    return schema


def allowed_values(schema: Any) -> list[str] | None:
    """The JSON encodings of a closed set of values, or None when the set is open."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return [json.dumps(schema["const"], ensure_ascii=False)]
    if isinstance(schema.get("enum"), list):
        return [json.dumps(v, ensure_ascii=False) for v in schema["enum"]]
    if schema.get("type") == "boolean":
        return ["true", "false"]
    return None


def answer_confidence(text: str, logprobs: list[dict[str, Any]] | None, schema: Any) -> float | None:
    """The confidence of the answer in `text` (see the module docstring); None without logprobs."""
    if not logprobs:
        return None
    tokens = [str(t.get("token", "")) for t in logprobs]
    joined = "".join(tokens)
    offset = joined.find(text.strip()) if joined != text else 0
    if offset < 0:
        return None
    body = joined[offset:]
    try:
        spans = leaf_spans(body)
    except (ValueError, IndexError):
        return None
    starts, pos = [], -offset
    for tok in tokens:
        starts.append(pos)
        pos += len(tok)
    worst = 1.0
    for start, end, path in spans:
        candidates = allowed_values(_subschema(schema, path))
        chosen = body[start:end]
        overlapping = [k for k, s in enumerate(starts) if s < end and s + len(tokens[k]) > start]
        if not overlapping:
            continue
        if candidates:
            conf = 1.0
            for k in overlapping:
                conf *= _renormalised(logprobs[k], tokens[k], starts[k], start, chosen, body, candidates)
        else:
            logs = [float(logprobs[k].get("logprob", 0.0)) for k in overlapping]
            conf = math.exp(sum(logs) / len(logs))
        worst = min(worst, conf)
    return worst


def _renormalised(entry: dict[str, Any], token: str, tok_start: int, span_start: int, chosen: str,
                  body: str, candidates: list[str]) -> float:
    """P(alternatives consistent with `chosen`) / P(alternatives consistent with any candidate) at one token."""
    pre = token[: max(0, span_start - tok_start)]  # the part of the token before the value starts
    emitted = body[span_start: max(span_start, tok_start)]  # the value's text before this token
    alts = {str(a.get("token", "")): float(a.get("logprob", -math.inf)) for a in entry.get("top_logprobs") or []}
    alts.setdefault(token, float(entry.get("logprob", 0.0)))
    num = den = 0.0
    for alt, logprob in alts.items():
        if not alt.startswith(pre):
            continue
        text = emitted + alt[len(pre):]
        p = math.exp(logprob)
        if _consistent(text, chosen):
            num += p
        if any(_consistent(text, c) for c in candidates):
            den += p
    return num / den if den > 0 else 1.0


def _consistent(text: str, value: str) -> bool:
    return value.startswith(text) or text.startswith(value)


def calibrate(pairs: list[tuple[float, bool]], target: float, *, minimum: int = 30,
              min_support: int = 10) -> float:
    """The lowest confidence threshold at which the checked answers at or above it agree with the
    reference at least `target` of the time (with at least `min_support` of them). Above 1 (always
    escalate) with fewer than `minimum` pairs or when no threshold reaches the target."""
    if len(pairs) < minimum:
        return 1.01
    ordered = sorted(pairs, key=lambda p: -p[0])
    best = 1.01
    agree = 0
    for n, (conf, ok) in enumerate(ordered, start=1):
        agree += int(ok)
        last_of_tie = n == len(ordered) or ordered[n][0] < conf
        if last_of_tie and n >= min_support and agree / n >= target:
            best = conf
    return best
