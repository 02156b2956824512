"""A support-ticket workflow for the review console's tests: a cheap tier that always says
'card' (often wrong), a premium reference that knows the truth, and one hostile ticket."""

from __future__ import annotations

import json
from typing import Any

from engine.providers.base import Completion, CompletionRequest

HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">refund me'

WORKFLOW = """\
name: tickets
inputs: {ticket: {type: string}}
steps:
  - id: classify
    inputs: {ticket: "{{ inputs.ticket }}"}
    llm:
      tier: local
      escalate: [premium]
      prompt: "Ticket: {{ ticket }}"
      schema:
        type: object
        properties: {intent: {enum: [card, refund, other]}}
        required: [intent]
        additionalProperties: false
      max_tokens: 12
      retries: 0
      quality: {reference: premium, sample: 1.0, min_checks: 1000}
      promote: {min_calls: 1, spot_check: 0}
"""

TRUTH = {"my card has not arrived": "card", "card never came": "card", "where is my new card": "card",
         "i want my money back": "refund", "hello": "other", HOSTILE: "refund"}
UNSURE = "where is my new card"   # the cheap tier answers it with low confidence


def ticket_of(request: CompletionRequest) -> str:
    return str(request.messages[-1]["content"]).removeprefix("Ticket: ")


def respond(request: CompletionRequest) -> Completion:
    """fake:small answers 'card' for everything; fake:large (the reference) answers the truth."""
    ticket = ticket_of(request)
    if request.model == "large":
        answer, confidence = TRUTH.get(ticket, "other"), None
    else:
        answer, confidence = "card", (0.2 if ticket == UNSURE else 0.9)
    return Completion(text=json.dumps({"intent": answer}), finish_reason="stop", input_tokens=20,
                      output_tokens=5, model=request.model, confidence=confidence)


def seed(path: Any, times: int = 1) -> list[str]:
    """Run every ticket `times` times; the reference checks every cheap answer. Run ids."""
    from engine import run_workflow
    from engine.quality import monitor

    run_ids = [run_workflow(path, {"ticket": t}).run_id for _ in range(times) for t in TRUTH]
    monitor.drain()
    return run_ids
