"""The pricing table: defaults, dated names, config overrides, cached-input prices."""

from __future__ import annotations

import pytest

from engine import run_workflow
from engine.config import load_config
from engine.pricing import DEFAULT_PRICES, Price, default_price, price_of
from engine.providers.keys import redact, retry_after


def test_defaults_and_dated_names():
    assert default_price("openai", "gpt-4o-mini") == Price(0.15, 0.60, 0.075)
    assert default_price("openai", "gpt-4o-mini-2024-07-18") == Price(0.15, 0.60, 0.075)  # not gpt-4o's
    assert default_price("openai", "gpt-4o-2024-08-06") == Price(2.50, 10.00, 1.25)
    assert default_price("anthropic", "claude-haiku-4-5-20251001") == Price(1.00, 5.00, 0.10, 1.25)
    assert default_price("openai", "my-finetune") is None
    assert all(cached <= inp for table in DEFAULT_PRICES.values() for inp, cached, _ in table.values())


def test_entry_beats_config_beats_defaults(project):
    project("name: x\nsteps: [{id: s, script: 'json:dumps'}]\n", config="""
pricing:
  "openai:gpt-4o": {input: 2.0, output: 8.0, cached_input: 0.5}
tiers:
  premium:
    - model: openai:gpt-4o
    - {model: "openai:gpt-4o-mini", output_price: 1.0}
    - model: llamacpp:smollm2
""")
    config = load_config()
    table = config.pricing
    a, b, c = config.chain("premium")
    assert price_of(a, table) == Price(2.0, 8.0, 0.5)
    assert price_of(b, table) == Price(0.15, 1.0, 0.075)
    assert price_of(c, table).free


def test_cached_tokens_cost_the_cached_price():
    price = Price(input=10, output=30, cached_input=1)
    assert price.cost(1000, 100, cached_input_tokens=800) == pytest.approx((200 * 10 + 800 * 1 + 100 * 30) / 1e6)
    assert Price(10, 30).cost(1000, 0, 800) == pytest.approx(1000 * 10 / 1e6)  # no cached price: full
    written = Price(input=10, output=30, cached_input=1, cache_write=12.5)
    assert written.cost(1000, 0, cached_input_tokens=100, cache_write_tokens=600) == pytest.approx(
        (300 * 10 + 100 * 1 + 600 * 12.5) / 1e6)


def test_retry_after_forms_and_redaction():
    assert retry_after({"retry-after": "3"}) == 3
    assert retry_after({"retry-after-ms": "1500"}) == 1.5
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after({"retry-after": "soon"}) is None and retry_after({}) is None
    assert redact("bad key sk-proj-abcdefghijklmnop here", None) == "bad key sk-proj-*** here"
    assert "s3cr3t-value" not in redact("key s3cr3t-value refused", "s3cr3t-value")


def test_step_cost_uses_the_table(project, fake):
    fake.enqueue({"a": 1})
    wf = project("""\
name: priced
steps:
  - id: s
    llm: {tier: t, prompt: "hi there", schema: {type: object}, max_tokens: 5}
""", config="""
pricing:
  "fake:m": {input: 1000000, output: 2000000}
tiers:
  t: [{model: "fake:m"}]
""")
    step = run_workflow(wf).step("s")
    call = step.calls[0]
    assert step.cost == pytest.approx(call["tokens_in"] * 1 + call["tokens_out"] * 2)


def test_example_cloud_config_loads(monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1] / "examples" / "cloud_tiers")
    config = load_config()
    assert [e.model for e in config.chain("standard")][0] == "openai:gpt-4o-mini"
    assert config.budgets.workflows == {"support_triage": 5} and config.fallbacks.allowed_fails == 3
    assert price_of(config.chain("premium")[1], config.pricing) == Price(2.0, 8.0, 0.5)
