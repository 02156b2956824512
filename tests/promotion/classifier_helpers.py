"""A topic-labelling workflow whose reference tier (a fake) labels by keyword, and phrasings of it."""

from __future__ import annotations

import random
from typing import Any

from engine.providers.base import CompletionRequest

TOPICS = {"card": ["my card", "the debit card", "card payment"],
          "transfer": ["a bank transfer", "sending money abroad", "the wire transfer"],
          "refund": ["a refund", "money back for an order", "reimbursement of a purchase"]}
OPENERS = ["please help with", "question about", "I have an issue with", "what happened to", "status of",
           "can you check", "urgent:", "hello, about"]
FILLERS = ["today", "since monday", "again", "from last week", "thanks", "asap", "for my account", "please",
           "right now", "yesterday evening"]

WORKFLOW = """\
name: topics
inputs: {text: {type: string}}
steps:
  - id: classify
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: local
      prompt: "Topic of: {{ text }}"
      schema:
        type: object
        properties: {topic: {enum: [card, transfer, refund]}}
        required: [topic]
        additionalProperties: false
      max_tokens: 12
      quality: {reference: local}     # the fake labeller is the reference: its answers are trusted
      promote: {spot_check: %(spot)s, classifier: {embedder: hash, min_pairs: %(min_pairs)s%(extra)s}}
"""


def topic_workflow(project: Any, *, spot: float = 0, min_pairs: int = 60, extra: str = "") -> Any:
    return project(WORKFLOW % {"spot": spot, "min_pairs": min_pairs, "extra": extra})


def topic_of(request: CompletionRequest) -> dict[str, Any]:
    text = request.messages[-1]["content"].removeprefix("Topic of: ")
    for topic, phrases in TOPICS.items():
        if any(p in text for p in phrases):
            return {"topic": topic}
    return {"topic": "card"}


def phrasings(n: int, seed: int = 0) -> list[str]:
    """n distinct texts, each naming one topic's phrase among unrelated words."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        topic = rng.choice(sorted(TOPICS))
        text = f"{rng.choice(OPENERS)} {rng.choice(TOPICS[topic])} {rng.choice(FILLERS)} #{rng.randrange(10**6)}"
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out
