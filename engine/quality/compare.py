"""Do two answers agree? Exact JSON equality (key order ignored) by default; per step
`compare:` narrows it to some fields, matches free text by embedding similarity (`semantic`), or
asks a tier (`judge`)."""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from engine.hashing import canonical_json
from engine.quality.spec import QualityPolicy

JUDGE_SCHEMA = {"type": "object", "properties": {"same": {"type": "boolean"}}, "required": ["same"],
                "additionalProperties": False}
JUDGE_SYSTEM = ("You compare two answers to the same task. Reply {\"same\": true} when they mean the "
                "same thing (wording may differ), else {\"same\": false}.")

Judge = Callable[[list[dict[str, str]], dict[str, Any]], Any]
"""Asks the judge tier: (messages, schema) -> its validated output."""


def _project(value: Any, fields: tuple[str, ...] | None) -> Any:
    if fields is None or not isinstance(value, dict):
        return value
    return {f: value.get(f) for f in fields}


def _strings_similar(a: str, b: str, threshold: float, embedder: str) -> bool:
    if a == b:
        return True
    from engine.cache.embedders import get_embedder

    vectors = np.asarray(get_embedder(embedder).embed([a, b]), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    if not norms.all():
        return False
    return float(vectors[0] @ vectors[1] / (norms[0] * norms[1])) >= threshold


def _semantic_equal(a: Any, b: Any, threshold: float, embedder: str) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return _strings_similar(a, b, threshold, embedder)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_semantic_equal(a[k], b[k], threshold, embedder) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_semantic_equal(x, y, threshold, embedder) for x, y in zip(a, b))
    return canonical_json(a) == canonical_json(b)


def answers_agree(policy: QualityPolicy, cheap: Any, reference: Any, judge: Judge | None = None) -> bool:
    a, b = _project(cheap, policy.compare_fields), _project(reference, policy.compare_fields)
    if canonical_json(a) == canonical_json(b):
        return True
    if policy.semantic is not None and _semantic_equal(a, b, policy.semantic, policy.embedder):
        return True
    if policy.judge is not None and judge is not None:
        messages = [{"role": "system", "content": JUDGE_SYSTEM},
                    {"role": "user", "content": "Answer A: " + json.dumps(a, ensure_ascii=False)
                     + "\nAnswer B: " + json.dumps(b, ensure_ascii=False)}]
        verdict = judge(messages, JUDGE_SCHEMA)
        return bool(isinstance(verdict, dict) and verdict.get("same"))
    return False
