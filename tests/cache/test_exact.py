"""The exact cache: keyed on workflow, step, prompt, schema, models, tenant and normalised input."""

from __future__ import annotations

import pytest

import textwrap

from engine import run_workflow
from engine.cache import cache_store
from engine.config import load_config
from engine.runner import open_store

from cache_helpers import label_workflow


def store():
    return open_store(load_config().store_path())


def test_repeat_is_served_from_cache_at_zero_tokens(project, fake):
    fake.enqueue({"label": "spam"})
    wf = project(label_workflow())
    first = run_workflow(wf, {"text": "buy now"})
    second = run_workflow(wf, {"text": "buy now"})
    assert len(fake.requests) == 1
    assert second.outputs == first.outputs == {"label": "spam"}
    step = second.step("classify")
    assert step.served_by == "cache" and (step.tokens_in, step.tokens_out, step.cost) == (0, 0, 0.0)
    assert step.cache is not None and step.cache["kind"] == "exact" and step.cache["source"] == "cache"
    assert first.step("classify").tokens_in > 0
    row = store().query("SELECT served_by, tokens_in FROM steps WHERE run_id = ?", [second.run_id])[0]
    assert row == {"served_by": "cache", "tokens_in": 0}
    hit = store().query("SELECT * FROM cache_events WHERE run_id = ?", [second.run_id])[0]
    assert hit["outcome"] == "hit" and hit["entry_id"] == step.cache["entry_id"]
    assert hit["tokens_saved"] == first.step("classify").tokens_in + first.step("classify").tokens_out


def test_whitespace_and_unicode_normalised_case_kept_by_default(project, fake):
    fake.enqueue({"label": "spam"}, {"label": "ham"})
    wf = project(label_workflow())
    run_workflow(wf, {"text": "buy now"})
    assert run_workflow(wf, {"text": "  buy \t now "}).step("classify").served_by == "cache"
    assert run_workflow(wf, {"text": "ｂｕｙ now"}).step("classify").served_by == "cache"  # NFKC
    assert run_workflow(wf, {"text": "BUY NOW"}).step("classify").served_by == "llm"


def test_case_normalisation_is_per_step(project, fake):
    fake.enqueue({"label": "spam"})
    wf = project(label_workflow(cache="        normalize: [case, whitespace]\n"))
    run_workflow(wf, {"text": "buy now"})
    assert run_workflow(wf, {"text": "BUY NOW"}).step("classify").served_by == "cache"


def test_key_changes_when_prompt_changes(project, fake):
    fake.enqueue({"label": "spam"}, {"label": "ham"})
    run_workflow(project(label_workflow()), {"text": "buy now"})
    changed = run_workflow(project(label_workflow(prompt="Classify: {{ text }}")), {"text": "buy now"})
    assert changed.step("classify").served_by == "llm" and changed.outputs == {"label": "ham"}
    assert len(fake.requests) == 2


def test_schema_change_invalidates_served_values(project, fake):
    fake.enqueue({"label": "spam"}, {"label": "junk"})
    run_workflow(project(label_workflow()), {"text": "buy now"})
    changed = run_workflow(project(label_workflow(labels="[junk, ham]")), {"text": "buy now"})
    assert changed.step("classify").served_by == "llm" and changed.outputs == {"label": "junk"}


def test_cached_value_is_revalidated_before_serving(project, fake):
    fake.enqueue({"label": "spam"}, {"label": "ham"})
    wf = project(label_workflow())
    run_workflow(wf, {"text": "buy now"})
    # an entry that no longer passes the schema (e.g. a validator tightened, or a corrupt row)
    store().db.execute("UPDATE cache_entries SET output = ?", ['{"label": "eggs"}'])
    again = run_workflow(wf, {"text": "buy now"})
    assert again.step("classify").served_by == "llm" and again.outputs == {"label": "ham"}
    events = [e["outcome"] for e in store().query("SELECT outcome FROM cache_events WHERE run_id = ?",
                                                   [again.run_id])]
    assert events == ["invalid"]


def test_model_chain_change_is_a_different_key(project, fake):
    fake.enqueue({"label": "spam"}, {"label": "ham"})
    run_workflow(project(label_workflow()), {"text": "buy now"})
    other = """
    tiers:
      local:
        - model: fake:other
    """
    again = run_workflow(project(label_workflow(), config=other), {"text": "buy now"})
    assert again.step("classify").served_by == "llm"


def test_ttl_expiry(project, fake):
    fake.enqueue({"label": "spam"}, {"label": "ham"})
    wf = project(label_workflow(cache="        ttl: 1m\n"))
    run_workflow(wf, {"text": "buy now"})
    assert run_workflow(wf, {"text": "buy now"}).step("classify").served_by == "cache"
    store().db.execute("UPDATE cache_entries SET created = created - 61")
    expired = run_workflow(wf, {"text": "buy now"})
    assert expired.step("classify").served_by == "llm" and expired.outputs == {"label": "ham"}
    assert run_workflow(wf, {"text": "buy now"}).outputs == {"label": "ham"}  # re-filled


@pytest.mark.parametrize("cache", [None, "false"], ids=["no cache key (opt-in)", "cache: false"])
def test_cache_is_off_unless_asked_for(project, fake, cache):
    fake.enqueue({"label": "spam"}, {"label": "ham"})
    text = label_workflow(cache=None)
    if cache == "false":
        text = text.replace("      max_tokens: 12\n", "      max_tokens: 12\n      cache: false\n")
    wf = project(text)
    run_workflow(wf, {"text": "buy now"})
    assert run_workflow(wf, {"text": "buy now"}).step("classify").served_by == "llm"
    assert store().query("SELECT COUNT(*) AS n FROM cache_entries")[0]["n"] == 0


def test_tenants_are_isolated(project, fake):
    fake.enqueue({"label": "spam"}, {"label": "ham"}, {"label": "ham"})
    wf = project(label_workflow())
    run_workflow(wf, {"text": "buy now"}, tenant="acme")
    other = run_workflow(wf, {"text": "buy now"}, tenant="globex")
    assert other.step("classify").served_by == "llm" and other.outputs == {"label": "ham"}
    assert run_workflow(wf, {"text": "buy now"}, tenant="acme").outputs == {"label": "spam"}
    assert run_workflow(wf, {"text": "buy now"}).step("classify").served_by == "llm"  # no tenant: its own
    assert len(fake.requests) == 3


def test_no_store_means_no_cache(project, fake):
    fake.enqueue({"label": "spam"}, {"label": "ham"})
    wf = project(label_workflow())
    run_workflow(wf, {"text": "buy now"}, store=False)
    assert run_workflow(wf, {"text": "buy now"}, store=False).outputs == {"label": "ham"}


def test_failed_steps_are_not_cached(project, fake):
    fake.enqueue("nope", "nope", {"label": "spam"})
    wf = project(label_workflow().replace("      max_tokens: 12\n", "      max_tokens: 12\n      retries: 1\n"))
    assert not run_workflow(wf, {"text": "buy now"}, raise_on_error=False).ok
    assert cache_store(store()).stats()[0]["entries"] == 0
    assert run_workflow(wf, {"text": "buy now"}).step("classify").served_by == "llm"


def test_cache_spec_shorthands_and_durations(project):
    from engine.spec.cache import CacheSpec

    assert CacheSpec.model_validate(False).enabled is False
    assert CacheSpec.model_validate({"ttl": "2h", "semantic": True}).ttl == 7200
    semantic = CacheSpec.model_validate({"semantic": True}).semantic
    assert (semantic.threshold, semantic.margin, semantic.embedder) == (0.90, 0.12, "minilm")
    import pytest
    from engine.errors import SpecError
    from engine.spec import load_workflow

    bad = project(label_workflow(cache=textwrap.indent("ttl: soon\n", " " * 8)))
    with pytest.raises(SpecError, match="not a duration"):
        load_workflow(bad)
