from __future__ import annotations

import pytest

from engine.templating import TemplateError, evaluate_condition, references, render


def test_single_expression_keeps_native_type():
    ctx = {"inputs": {"xs": [1, 2], "n": 3}}
    assert render("{{ inputs.xs }}", ctx) == [1, 2]
    assert render("  {{ inputs.n + 1 }} ", ctx) == 4
    assert render("n={{ inputs.n }}", ctx) == "n=3"
    assert render({"a": ["{{ inputs.n }}"]}, ctx) == {"a": [3]}


def test_missing_variable_is_an_error_never_empty():
    with pytest.raises(TemplateError, match="undefined"):
        render("Hello {{ name }}!", {})
    with pytest.raises(TemplateError):
        render("{{ inputs.missing }}", {"inputs": {}})


def test_sandbox_blocks_attribute_escape():
    with pytest.raises(TemplateError):
        render("{{ ''.__class__.__mro__ }}", {})


def test_conditions():
    ctx = {"steps": {"a": {"output": 5}}}
    assert evaluate_condition("steps.a.output > 3", ctx) is True
    assert evaluate_condition("{{ steps.a.output > 9 }}", ctx) is False
    assert evaluate_condition(True, ctx) is True


def test_references_are_longest_chains():
    refs = {r.path for r in references("{{ steps.a.output.x }} {{ inputs['b'] }} {{ inputs.c | upper }}")}
    assert refs == {("steps", "a", "output", "x"), ("inputs", "b"), ("inputs", "c")}


def test_a_key_named_like_a_dict_method_reads_the_value():
    from engine.templating import render

    state = {"steps": {"items": {"output": [1, 2]}, "keys": {"output": "k"}}}
    assert render("{{ steps.items.output }}", state) == [1, 2]
    assert render("{{ steps.items.output | length }} / {{ steps.keys.output }}", state) == "2 / k"
